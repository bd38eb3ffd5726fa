"""The typed API behind the CLI: ``train`` (and ``evaluate``, from :mod:`orchestrator.suites`).

``train`` checks everything it can before Ray starts (config, tracking store, resume
checkpoint, the runner's own input), then builds the method's runner (the registry names
it), the worker pool and the MLflow run, and hands them to the loop shell.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.loop import RunResult, run_loop, sigterm_as_exit
from metaorch.orchestrator.preflight import check_ray_address, check_tracking_uri, tracking_uri_for
from metaorch.orchestrator.runs import check_empty_run, resolve_checkpoint
from metaorch.orchestrator.session import check_capacity, ray_session
from metaorch.orchestrator.suites import EvalResult, evaluate
from metaorch.orchestrator.system_metrics import system_metrics
from metaorch.orchestrator.tracking import Tracker
from metaorch.orchestrator.tracking_off import start_tracker


def train(
    config: Config,
    *,
    resume: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    run_id: str | None = None,
    report: Callable[[int, dict[str, float], Tracker], None] | None = None,
) -> RunResult:
    """Meta-train as ``config`` says; returns the run with its final meta-parameters.

    ``run_id``: log into this existing, still empty run (``metaorch submit`` creates the run
    so that it can print its URL before the job starts). ``report(done, metrics, tracker)``:
    called after every iteration (``metaorch tune`` reports validation figures to Ray Tune so).
    """
    uri = tracking_uri_for(tracking_uri, config.tracking.uri)
    address = address or os.environ.get("RAY_ADDRESS") or config.ray.address
    check_tracking_uri(uri)
    check_ray_address(address)
    if run_id is not None:
        check_empty_run(uri, run_id, resume)
    start = resolve_checkpoint(resume, uri, config.checkpoint.dir) if resume else None
    runner = registry.method(config.algorithm.name).runner_class()(config)
    meta_params = runner.initial_params()
    if start is not None:
        if start.meta_params.shape != meta_params.shape:
            raise UserError(
                f"--resume {resume}: checkpoint has {start.meta_params.numel()} meta-parameters, "
                f"the config's model/algorithm has {meta_params.numel()}"
            )
        if start.iteration > config.outer.iterations:
            raise UserError(
                f"--resume {resume}: checkpoint is at iteration {start.iteration}, beyond "
                f"outer.iterations={config.outer.iterations}"
            )
        meta_params = start.meta_params

    with ray_session(address, config.ray.num_cpus):
        size = check_capacity(config.workers, reserved_gpus=runner.reserve())
        try:
            runner.start(meta_params)
            if start is not None:
                runner.load_state_dict(start.optimizer)
                torch.set_rng_state(start.torch_rng)
            pool = runner.make_pool(config, size, runner.worker_data)
            try:
                tracker = start_tracker(
                    uri,
                    config.tracking.experiment,
                    run_name=config.tracking.run_name,
                    run_id=start.run_id if start else run_id,
                    buffer_max=config.tracking.buffer_max,
                    spill_root=config.checkpoint.dir,
                )
                with sigterm_as_exit(), system_metrics(tracker, config.tracking.system_metrics_s, pool):
                    return run_loop(config, runner, pool, tracker, start.iteration if start else 0, progress, report)
            finally:
                pool.shutdown()
        finally:
            runner.close()


__all__ = ["EvalResult", "RunResult", "evaluate", "train"]
