"""``metaorch``: train, eval and config show. Bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import logging
import sys

from orchestrator.errors import UserError


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

    t = sub.add_parser("train", help="meta-train from a YAML config")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. outer.lr=0.001")
    t.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, sqlite:///mlflow.db)")
    t.add_argument("--resume", metavar="RUN_ID_OR_CHECKPOINT", help="continue a run from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("eval", help="meta-test a run or checkpoint on fresh tasks")
    e.add_argument("source", metavar="RUN_ID_OR_CHECKPOINT")
    e.add_argument("--tasks", type=_positive, default=None, help="number of meta-test tasks (default: the run's eval.tasks, 600)")
    e.add_argument("--steps", type=_steps, default=None, help="inner steps to report, e.g. 1,5,10")
    e.add_argument("--tracking-uri", help="MLflow tracking URI holding the training run")
    e.add_argument("--checkpoint-dir", default="checkpoints", help="local checkpoint root (default: checkpoints)")
    e.add_argument("--suite", default="meta-test", help="meta-test (fresh tasks, default) or omniglot-runs")
    e.add_argument("--runs", metavar="DIR_OR_ZIP", help="omniglot-runs: folder or zip of runNN/ folders in the original format")

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved, validated configuration")
    show.add_argument("config", nargs="?", help="YAML config file (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from orchestrator.config import load_config

    if args.command == "config":
        print(load_config(args.config, args.overrides).to_yaml(), end="")
        return 0

    from orchestrator.tracking import ui_command
    from orchestrator.trainer import evaluate, print_estimates, train

    if args.command == "train":
        config = load_config(args.config, args.overrides)
        result = train(config, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri, progress=not args.quiet)
        print(f"run {result.run_id}: {result.iterations} iterations in {result.train_seconds:.1f}s, {result.restarts} worker restart(s)")
        print(f"checkpoint: {result.checkpoint}")
        if result.test:
            print_estimates(result.test)
        print(f"MLflow UI: {ui_command(result.tracking_uri)}")
        return 0

    result = evaluate(
        args.source, tasks=args.tasks, steps=args.steps, tracking_uri=args.tracking_uri,
        checkpoint_dir=args.checkpoint_dir, suite=args.suite, runs=args.runs,
    )  # fmt: skip
    for name, error in (result.per_run or {}).items():
        print(f"{name}: error rate {100 * error:.1f}%")
    print_estimates(result.estimates)
    if result.run_id:
        print(f"logged as run {result.run_id}, nested under {result.parent_run_id}")
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"metaorch: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
