"""Console output: progress (a bar on a terminal, plain log lines elsewhere: Ray job logs, CI)
and the meta-test's numbers."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from metaorch.orchestrator.evaluation import Estimates


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, interval_s: float = 10.0):
        self.total = total
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self.interval_s = interval_s
        self._last = 0.0
        self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, file=sys.stdout) if self.tty else None

    def update(self, iteration: int, values: dict[str, float]) -> None:
        """``iteration`` is the number of completed iterations."""
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self._bar is not None:
            self._bar.n = iteration
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval_s or iteration == self.total):
            self._last = now
            print(f"[metaorch] iteration {iteration}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def print_estimates(estimates: Estimates) -> None:
    if len(estimates) > 12:  # an RL² bandit trial has one entry per pull: the first and last few tell the story
        keys = list(estimates)
        shown = keys[:3] + keys[-4:]
        print_estimates({k: estimates[k] for k in shown[:3]})
        print(f"... {len(keys) - len(shown)} more in the MLflow run ...")
        print_estimates({k: estimates[k] for k in shown[3:]})
        return
    for key, est in estimates.items():
        if isinstance(key, int):
            print(f"meta-test MSE after {key} inner step(s): {est} (95% CI, {est.n} tasks)")
        elif key.startswith(("return", "gain")):
            print(f"meta-test {key}: {est.mean:.3f} +/- {est.ci95:.3f} (95% CI, {est.n} tasks)")
        else:  # an Omniglot task is one episode; a Meta-World success rate is over tasks
            print(f"meta-test {key}: {est} (95% CI, {est.n} {'tasks' if key.startswith('success') else 'episodes'})")
