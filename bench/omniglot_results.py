"""Meta-test accuracy on Omniglot's held-out alphabet for every supervised method, each
trained through the orchestrator (2 local workers, 2 CPU cores) from its config in configs/.

Published 5-way 1-shot / 20-way 1-shot on full Omniglot: MAML 98.7 / 95.8, first-order MAML
98.3 / 89.4, Reptile 97.7 / 89.4, Prototypical 98.8 / 96.0, Matching 98.1 / 93.8, SNAIL
99.1 / 97.6; MANN (5 classes) 82.8% on the 2nd instance, 94.9% on the 5th.
Targets (issue 3), small sets only: Prototypical 5-way 1-shot >= 95% and 20-way 1-shot >= 85%
within 30 minutes; MAML 5-way 1-shot >= 90% within 60 minutes.

    python bench/omniglot_results.py [--only protonet,maml] [--set outer.iterations=100]

The configs download the data; this bench reads ../shared/data/omniglot instead (--set data.root=... to change).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import ray  # noqa: E402

from metaorch.orchestrator.config import load_config  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "omniglot")  # the small sets beside this checkout
METHODS = ("protonet", "maml", "fomaml", "anil", "metasgd", "reptile", "matching", "siamese", "mann", "snail")
PUBLISHED = {
    "protonet": "98.8 / 96.0",
    "maml": "98.7 / 95.8",
    "fomaml": "98.3 / 89.4",
    "reptile": "97.7 / 89.4",
    "matching": "98.1 / 93.8",
    "snail": "99.1 / 97.6",
    "mann": "2nd inst. 82.8, 5th 94.9",
}
# (setting, minimum accuracy, training budget in seconds)
TARGETS = {"protonet": [("acc_5way_1shot", 0.95, 1800), ("acc_20way_1shot", 0.85, 1800)], "maml": [("acc_5way_1shot", 0.90, 3600)]}


def headline(name: str, test: dict) -> str:
    """5-way 1-shot (after the most inner steps evaluated) and 20-way 1-shot where tested."""
    def best(prefix: str) -> str:
        keys = [k for k in test if isinstance(k, str) and k.startswith(prefix)]
        return str(test[keys[-1]]) if keys else "-"

    return f"{best('acc_5way_1shot')} | {best('acc_20way_1shot')}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(METHODS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every config")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        for name in args.only.split(","):
            config = load_config(f"configs/omniglot_{name}.yaml", [f"checkpoint.dir={tmp}/ckpt", f"data.root={SHARED}", "data.download=false", *args.overrides])
            run = train(config, tracking_uri=f"sqlite:///{tmp}/mlflow.db", progress=False)
            verdicts = []
            for key, bar, budget in TARGETS.get(name, []):
                hits = [k for k in run.test if isinstance(k, str) and k.startswith(key)]
                ok = any(run.test[k].mean >= bar for k in hits) and run.train_seconds <= budget
                verdicts.append(f"{key} >= {bar:.0%} in {budget // 60} min: {'met' if ok else 'NOT met'}")
            rows.append((name, run.iterations, run.train_seconds, run.test, verdicts))
            print(f"{name}: trained {run.iterations} iterations in {run.train_seconds:.0f}s", flush=True)
            for key, est in run.test.items():
                print(f"  {key}: {est}", flush=True)
        ray.shutdown()
    print("\n| method | iterations | train time | 5-way 1-shot | 20-way 1-shot | published 5/20-way 1-shot | target |")
    print("|---|---|---|---|---|---|---|")
    for name, iters, secs, test, verdicts in rows:
        print(f"| {name} | {iters} | {secs / 60:.1f} min | {headline(name, test)} | {PUBLISHED.get(name, '-')} | {'; '.join(verdicts) or '-'} |")


if __name__ == "__main__":
    main()
