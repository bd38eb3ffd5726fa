"""Console progress: a bar on a terminal, plain log lines elsewhere (Ray job logs, CI)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


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
