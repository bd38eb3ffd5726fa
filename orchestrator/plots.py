"""Pictures for the MLflow run: what the meta-model predicts before and after adapting, and
meta-RL adaptation curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from metaorch.algorithms.gradient_based import GradientBasedLearner
from metaorch.tasks.base import TaskDescriptor, TaskFamily


def _pyplot():
    """pyplot on the Agg backend, imported when a picture is drawn: training imports this module,
    and a run that draws nothing (tracking off, on a machine without matplotlib) must not need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def regression_predictions(
    learner: GradientBasedLearner,
    family: TaskFamily,
    meta_params: torch.Tensor,
    tasks: Sequence[TaskDescriptor],
    steps: int,
    points: int = 200,
):
    """One panel per task: truth on a dense set of inputs, support points, pre and post prediction."""
    meta_params = meta_params.detach().cpu()
    batch = family.batch(list(tasks), queries=points)
    fig, axes = _pyplot().subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        sx, sy = batch["support_x"][i], batch["support_y"][i]
        qx, qy = batch["query_x"][i], batch["query_y"][i]
        order = torch.argsort(qx[:, 0])
        adapted = learner.adapt(meta_params, sx, sy, steps)
        with torch.no_grad():
            pre = learner.model(learner.weights(meta_params), qx)
            post = learner.model(adapted, qx)
        ax.plot(qx[order, 0], qy[order, 0], "k-", lw=1.5, label="truth")
        ax.plot(qx[order, 0], pre[order, 0], "C0--", label="meta-init")
        ax.plot(qx[order, 0], post[order, 0], "C3-", label=f"after {steps} step(s)")
        ax.plot(sx[:, 0], sy[:, 0], "k^", ms=5, label=f"{len(sx)} support points")
        ax.set_title(f"held-out task {tasks[i].index}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def adaptation_curve(returns: Mapping[str, object], xlabel: str, first: int, title: str):
    """Mean return with its 95% CI at each adaptation step or trial episode (numbered from
    ``first``), one line per curve in ``returns`` (name -> list of Estimates in order)."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.4))
    for i, (name, estimates) in enumerate(returns.items()):
        xs = list(range(first, first + len(estimates)))
        means = [e.mean for e in estimates]
        half = [e.ci95 for e in estimates]
        ax.errorbar(xs, means, yerr=half, marker="o", capsize=3, color=f"C{i}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("return (mean, 95% CI over tasks)")
    ax.set_xticks(xs)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def success_by_class(classes: Mapping[str, object], overall: object, title: str):
    """Success rate with its 95% CI per task class (Estimates), and overall, as bars."""
    names = [*classes, "overall"]
    estimates = [*classes.values(), overall]
    fig, ax = _pyplot().subplots(figsize=(max(4.0, 0.5 * len(names) + 1.5), 3.4))
    ax.bar(range(len(names)), [e.mean for e in estimates], yerr=[e.ci95 for e in estimates], capsize=3,
           color=[f"C{0 if n != 'overall' else 3}" for n in names])  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (mean, 95% CI over tasks)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
