"""``metaorch``: train, eval, submit, jobs and config show. Bad input exits with code 2 and one line;
a worker pool out of restarts exits with code 1 and one line (its last checkpoint is saved)."""

from __future__ import annotations

import argparse
import logging
import sys

from metaorch.orchestrator import registry, tune
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import redact


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: expected comma-separated integers, e.g. 1,5,10") from None
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"--steps {text!r}: expected non-negative integers")
    return steps


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaorch", description="Distributed meta-training on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="meta-train from a YAML config", epilog=registry.summary(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    t.add_argument("config", help="YAML config file")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. outer.lr=0.001")
    t.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the config's, sqlite:///mlflow.db); none: tracking off, no MLflow")
    t.add_argument("--resume", metavar="RUN_ID_OR_CHECKPOINT", help="continue a run from its last checkpoint")
    t.add_argument("--run-id", help="log into this existing, empty MLflow run (metaorch submit creates it)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    tune.add_parser(sub)

    e = sub.add_parser("eval", help="meta-test a run or checkpoint on fresh tasks")
    e.add_argument("source", metavar="RUN_ID_OR_CHECKPOINT")
    e.add_argument("--tasks", type=_positive, default=None, help="number of meta-test tasks (default: the run's eval.tasks, 600)")
    e.add_argument("--steps", type=_steps, default=None, help="inner steps to report, e.g. 1,5,10")
    e.add_argument("--tracking-uri", help="MLflow tracking URI holding the training run")
    e.add_argument("--checkpoint-dir", default="checkpoints", help="local checkpoint root (default: checkpoints)")
    e.add_argument("--suite", default="meta-test", help="meta-test (fresh tasks, default) or omniglot-runs")
    e.add_argument("--runs", metavar="DIR_OR_ZIP", help="omniglot-runs: folder or zip of runNN/ folders in the original format")
    e.add_argument("--register", metavar="NAME", help="register the run's model as a new version of NAME; alias champion moves to it if better")

    s = sub.add_parser("submit", help="run train as a Ray job on a cluster (uploads this directory)")
    s.add_argument("config", help="YAML config file inside the working directory")
    s.add_argument("--address", help="Ray job API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--runtime-env", metavar="FILE", help="Ray runtime env (YAML), e.g. cluster/runtime_env.yaml")
    s.add_argument("--tracking-uri", help="MLflow tracking URI the job logs to (default: MLFLOW_TRACKING_URI, else the config's)")
    s.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its newest checkpoint in the tracking store")
    s.add_argument("--no-wait", action="store_true", help="print the ids and return instead of following the logs")
    s.add_argument("--entrypoint-num-gpus", type=float, help="GPUs for the driver, e.g. 1 (with learner nodes)")
    s.add_argument("--entrypoint-resources", metavar="JSON", help='custom resources for the driver, e.g. \'{"learner": 1}\'')
    tune.add_search_arguments(s, required=False)

    j = sub.add_parser("jobs", help="list, inspect, follow and stop submitted jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    for name, text in (
        ("list", "jobs on the cluster"),
        ("status", "a job's status and MLflow run"),
        ("logs", "a job's logs"),
        ("stop", "stop a job (its driver saves a checkpoint)"),
    ):
        cmd = jsub.add_parser(name, help=text)
        if name != "list":
            cmd.add_argument("submission_id")
        cmd.add_argument("--address", help="Ray job API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="keep printing until the job ends")

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved, validated configuration")
    show.add_argument("config", nargs="?", help="YAML config file (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from metaorch.orchestrator.config import load_config

    if args.command == "config":
        print(load_config(args.config, args.overrides).to_yaml(), end="")
        return 0
    if args.command in ("submit", "jobs"):
        return _jobs(args)
    if args.command == "tune":
        return tune.run_command(args)
    config = load_config(args.config, args.overrides) if args.command == "train" else None  # before torch and Ray load

    from metaorch.orchestrator.console import print_estimates
    from metaorch.orchestrator.mlflow_client import ui_command
    from metaorch.orchestrator.tracking_off import METRICS_FILE, tracking_off
    from metaorch.orchestrator.trainer import evaluate, train
    from metaorch.workers import PoolExhausted

    if config is not None:
        try:
            result = train(
                config, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri,
                progress=not args.quiet, run_id=args.run_id,
            )  # fmt: skip
        except PoolExhausted as exc:  # the loop saved a checkpoint and marked the run FAILED
            print(f"metaorch: error: the worker pool gave out: {redact(str(exc))}", file=sys.stderr)
            return 1
        print(f"run {result.run_id}: {result.iterations} iterations in {result.train_seconds:.1f}s, {result.restarts} worker restart(s)")
        print(f"checkpoint: {result.checkpoint}")
        if result.test:
            print_estimates(result.test)
        if tracking_off(result.tracking_uri):
            print(f"tracking off: metrics in {result.checkpoint.parent / METRICS_FILE}")
        else:
            print(f"MLflow UI: {redact(ui_command(result.tracking_uri))}")
        return 0

    result = evaluate(
        args.source, tasks=args.tasks, steps=args.steps, tracking_uri=args.tracking_uri,
        checkpoint_dir=args.checkpoint_dir, suite=args.suite, runs=args.runs, register=args.register,
    )  # fmt: skip
    for name, error in (result.per_run or {}).items():
        print(f"{name}: error rate {100 * error:.1f}%")
    print_estimates(result.estimates)
    if result.run_id:
        print(f"logged as run {result.run_id}, nested under {result.parent_run_id}")
    if result.registered:
        print(result.registered)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from metaorch.orchestrator import job_api, jobs

    if args.command == "submit":
        return jobs.submit(
            args.config, address=args.address, overrides=args.overrides, runtime_env_file=args.runtime_env,
            tracking=args.tracking_uri, resume=args.resume, wait=not args.no_wait,
            num_gpus=args.entrypoint_num_gpus, resources=args.entrypoint_resources, search=tune.search_arguments(args),
        )  # fmt: skip
    if args.jobs_command == "list":
        return job_api.list_jobs(args.address)
    if args.jobs_command == "status":
        return job_api.status(args.submission_id, args.address)
    if args.jobs_command == "logs":
        return job_api.logs(args.submission_id, args.address, args.follow)
    return job_api.stop(args.submission_id, args.address)


class _Redact(logging.Filter):
    """No password of a URI reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _Redact) for f in handler.filters):
            handler.addFilter(_Redact())
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"metaorch: error: {redact(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
