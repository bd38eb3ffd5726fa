"""Every method and task family, declared once: config validation, the CLI's help, the
builders and the choice of runner all read these tables.

Importing this module imports nothing heavy: builders and runners are named here and
imported on first use, so ``metaorch config show`` stays fast and the worker processes
load only what their job needs (gymnasium and MuJoCo for meta-RL, Pillow for Omniglot).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Problem = Literal["regression", "classification", "rl"]


def _resolve(ref: str) -> Any:
    """``"package.module:attribute"`` -> the attribute, imported now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Method:
    """A meta-learning or meta-RL method.

    ``build``: ``"module:function"`` of ``(config, family) -> learner`` (supervised) or
    ``(config, family) -> policy`` (meta-RL). ``runner``: ``"module:Class"`` of the
    :class:`orchestrator.runner.Runner` that trains and meta-tests it.
    """

    name: str
    problems: frozenset[str]
    build: str
    runner: str
    section: str | None = None  # its own config section, e.g. "rl.ppo"
    adapts: bool = True  # has inner steps (evaluated after each of eval.steps)
    any_ways: bool = False  # no N-unit output layer: meta-test at any N
    inner_optimizer: bool = False  # takes algorithm.inner_optimizer / inner_batch
    trials: bool = False  # plays each task as a trial of task.trial_episodes episodes
    continuous_actions: bool = False  # needs Box actions
    hidden_layers: int | None = None  # model.hidden must have this many widths

    def builder(self) -> Callable[..., Any]:
        return _resolve(self.build)

    def runner_class(self) -> type:
        return _resolve(self.runner)


@dataclass(frozen=True)
class TaskFamily:
    """A task family. ``build``: ``"module:Class"``, constructed with the ``task`` and ``data``
    config fields its signature names (supervised); meta-RL: an ``EnvFamily`` class, built by
    ``tasks.rl.make_family`` with ``task.trial_episodes`` and ``task.options``."""

    name: str
    problem: Problem
    build: str
    model: Literal["mlp", "conv4"] | None = None  # the adapting methods' network
    needs_data: bool = False  # reads data.root; the driver builds one episode of each split first
    augments: bool = False  # task.shift and task.mirror (training drawings moved, mirrored) apply
    examples_per_class: int | None = None  # task.shots + task.queries may not exceed it
    discrete_actions: bool = False
    success: bool = False  # episodes report info["success"]: success rates are logged beside returns
    suites: tuple[str, ...] = ()  # evaluation suites beside the meta-test (orchestrator.suites)

    def builder(self) -> Callable[..., Any]:
        return _resolve(self.build)

    @property
    def batch_norm(self) -> bool:
        """Conv-4 has batch norm: ``model.transductive`` applies."""
        return self.model != "mlp"

    @property
    def vectorize(self) -> Literal["vmap", "loop"]:
        """``algorithm.vectorize=auto``: vmap for the MLP, a loop for Conv-4 (vmap's batched convolutions are slower)."""
        return "vmap" if self.model == "mlp" else "loop"


_SUP = "metaorch.orchestrator.supervised:SupervisedRunner"
_RL = "metaorch.orchestrator.rl_training"
_B = "metaorch.orchestrator.components"
_BOTH = frozenset({"regression", "classification"})
_CLS = frozenset({"classification"})
_RLP = frozenset({"rl"})

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("maml", _BOTH, f"{_B}:maml", _SUP),
        Method("fomaml", _BOTH, f"{_B}:fomaml", _SUP),
        Method("metasgd", _BOTH, f"{_B}:metasgd", _SUP),
        Method("reptile", _BOTH, f"{_B}:reptile", _SUP, inner_optimizer=True),
        Method("anil", _CLS, f"{_B}:anil", _SUP),
        Method("protonet", _CLS, f"{_B}:protonet", _SUP, adapts=False, any_ways=True),
        Method("matching", _CLS, f"{_B}:matching", _SUP, adapts=False, any_ways=True),
        Method("siamese", _CLS, f"{_B}:siamese", _SUP, adapts=False, any_ways=True),
        Method("mann", _CLS, f"{_B}:mann", _SUP, adapts=False),
        Method("snail", _CLS, f"{_B}:snail", _SUP, adapts=False),
        Method("maml_trpo", _RLP, f"{_B}:mlp_policy", f"{_RL}:MAMLTRPORunner", section="rl.maml_trpo"),
        Method("rl2", _RLP, f"{_B}:gru_policy", f"{_RL}:RL2Runner", section="rl.ppo", trials=True, hidden_layers=1),
        Method("pearl", _RLP, f"{_B}:pearl_policy", f"{_RL}:PEARLRunner", section="rl.pearl", continuous_actions=True),
    )
}

_ENV = "metaorch.tasks.rl"
TASKS: dict[str, TaskFamily] = {
    t.name: t
    for t in (
        TaskFamily("sinusoid", "regression", "metaorch.tasks.sinusoid:SinusoidTasks", model="mlp"),
        TaskFamily(
            "omniglot", "classification", "metaorch.tasks.omniglot:OmniglotTasks", model="conv4",
            needs_data=True, augments=True, examples_per_class=20, suites=("omniglot-runs",),
        ),  # fmt: skip
        TaskFamily("half_cheetah_vel", "rl", f"{_ENV}:HalfCheetahVel"),
        TaskFamily("half_cheetah_dir", "rl", f"{_ENV}:HalfCheetahDir"),
        TaskFamily("ant_dir", "rl", f"{_ENV}:AntDir"),
        TaskFamily("ant_goal", "rl", f"{_ENV}:AntGoal"),
        TaskFamily("navigation_2d", "rl", f"{_ENV}:Navigation2D"),
        TaskFamily("bandit", "rl", f"{_ENV}:BernoulliBandits", discrete_actions=True),
        TaskFamily("tabular_mdp", "rl", f"{_ENV}:TabularMDPs", discrete_actions=True),
        TaskFamily("metaworld", "rl", f"{_ENV}.metaworld:MetaWorld", success=True),
    )
}

METHOD_NAMES = tuple(METHODS)
TASK_NAMES = tuple(TASKS)
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
TaskName = Literal[TASK_NAMES]  # type: ignore[valid-type]


def method(name: str) -> Method:
    return METHODS[name]


def task(name: str) -> TaskFamily:
    return TASKS[name]


def methods_for(problem: str) -> list[str]:
    """The methods that apply to a problem, in declaration order."""
    return [m.name for m in METHODS.values() if problem in m.problems]


def tasks_for(problems: frozenset[str]) -> list[str]:
    return [t.name for t in TASKS.values() if t.problem in problems]


def summary() -> str:
    """One line per method and per task family: the CLI's help epilog."""
    lines = ["methods:"]
    lines += [f"  {m.name:<10} {'/'.join(sorted(m.problems)):<26} {m.section or ''}".rstrip() for m in METHODS.values()]
    lines += ["task families:"]
    lines += [f"  {t.name:<17} {t.problem}" for t in TASKS.values()]
    return "\n".join(lines)
