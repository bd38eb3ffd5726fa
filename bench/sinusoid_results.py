"""Meta-test MSE on sinusoid regression (K=10, 600 held-out tasks, 95% CI) for the four
optimisation-based methods, each trained through the orchestrator on this machine.

Published (Meta-SGD paper, Table 1, 10 shots, one step): MAML 0.77 +/- 0.11, Meta-SGD 0.53 +/- 0.09.
Targets (issue 2): MAML <= 0.77 and Meta-SGD <= 0.53, each trained in at most 15 minutes.

    python bench/sinusoid_results.py [--iterations 20000] [--only maml,metasgd]
"""

from __future__ import annotations

import argparse
import tempfile

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

import ray  # noqa: E402

from metaorch.orchestrator.config import load_config  # noqa: E402
from metaorch.orchestrator.trainer import train  # noqa: E402

CONFIGS = {
    "maml": "configs/sinusoid_maml.yaml",
    "fomaml": "configs/sinusoid_fomaml.yaml",
    "reptile": "configs/sinusoid_reptile.yaml",
    "metasgd": "configs/sinusoid_metasgd.yaml",
}
PUBLISHED = {"maml": "0.77 +/- 0.11", "metasgd": "0.53 +/- 0.09"}
TARGET = {"maml": 0.77, "metasgd": 0.53}
BUDGET_S = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--only", default=",".join(CONFIGS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        for name in args.only.split(","):
            config = load_config(
                CONFIGS[name],
                [f"outer.iterations={args.iterations}", f"checkpoint.dir={tmp}/ckpt", "eval.steps=[1,5,10]"],
            )
            run = train(config, tracking_uri=f"sqlite:///{tmp}/mlflow.db", progress=False)
            one = run.test[1]
            verdict = "" if name not in TARGET else ("met" if one.mean <= TARGET[name] and run.train_seconds <= BUDGET_S else "NOT met")
            rows.append((name, run.iterations, run.train_seconds, run.test, PUBLISHED.get(name, "-"), verdict))
            print(f"{name}: {one} after 1 step, trained {run.iterations} iterations in {run.train_seconds:.0f}s", flush=True)
        ray.shutdown()
    print("\n| method | iterations | train time | MSE 1 step | MSE 5 steps | MSE 10 steps | published (1 step) | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, iters, secs, test, pub, verdict in rows:
        print(f"| {name} | {iters} | {secs / 60:.1f} min | {test[1]} | {test[5]} | {test[10]} | {pub} | {verdict} |")


if __name__ == "__main__":
    main()
