"""``metaorch jobs``: list, inspect, follow and stop metaorch's Ray jobs through Ray's job API.

Ray's own client waits long on an address that does not answer, and reports an unknown job as
a 404 traceback: every call here probes first and turns those into one line naming the address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import TIMEOUT_S, redact

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # the variable `ray job` reads too
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# `jobs stop` sends SIGTERM and SIGKILL this many seconds later (Ray's default is 3): time for
# the driver to save a checkpoint and send its last metrics. Submitted jobs get it as an env var.
STOP_WAIT_S = 60


def job_address(address: str | None) -> str:
    """The job API URL: ``--address``, else RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS."""
    if not address:
        ray_address = os.environ.get("RAY_ADDRESS", "")
        address = os.environ.get(ADDRESS_ENV) or (ray_address if ray_address.startswith(("http://", "https://")) else "")
    if not address:
        raise UserError(f"--address: give the Ray job API, e.g. --address http://127.0.0.1:8265 (or set {ADDRESS_ENV})")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(
            f"--address {address!r}: expected the dashboard / job API URL, http://HOST:8265 "
            "(the GCS address HOST:6379 is for metaorch train --address)"
        )
    try:
        parsed.port
    except ValueError:
        raise UserError(f"--address {address!r}: the port is not a number from 0 to 65535") from None
    return address.rstrip("/")


# -- the job API ----- ---------------------------------------------------------------------------
@contextmanager
def _without(*names: str) -> Iterator[None]:
    """Ray's client prefers RAY_ADDRESS / RAY_API_SERVER_ADDRESS to the address it is given."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    """A JobSubmissionClient for ``address``, after a quick probe (Ray's client waits long on a dead one)."""
    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answers (an auth error is for Ray's client to report)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(f"--address {address}: the job API is unreachable ({getattr(exc, 'reason', exc)})") from None
    from ray.job_submission import JobSubmissionClient

    # Ray's INFO lines on packaging and log streams, and its one-time notes on default excludes
    logging.getLogger("ray.dashboard.modules").setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env").setLevel(logging.ERROR)
    try:
        with _without("RAY_ADDRESS", ADDRESS_ENV):
            return JobSubmissionClient(address)
    except Exception as exc:
        raise UserError(f"--address {address}: {exc}") from None


def _api(address: str, job: str, call):
    """One job API call; an unknown job is the user's error, named with the address."""
    try:
        return call()
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise UserError(f"job {job}: no such job at {address}") from None
        raise


def wait_terminal(jobs, submission_id: str, timeout_s: float = float("inf")) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(submission_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def follow(jobs, submission_id: str) -> str:
    """Print the job's logs as they come; its final status."""

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            sys.stdout.write(redact(chunk))
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream broke off; the job itself may be fine
        print(f"[metaorch] log stream ended: {exc}", file=sys.stderr)
    return wait_terminal(jobs, submission_id)


# -- commands ------------------------------------------------------------------------------
def list_jobs(address: str | None) -> int:
    address = job_address(address)
    jobs = connect(address)
    for job in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
        run = (job.metadata or {}).get("metaorch_run_id", "-")
        print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  run {run}  {redact(job.entrypoint)}")
    return 0


def status(submission_id: str, address: str | None) -> int:
    address = job_address(address)
    jobs = connect(address)
    info = _api(address, submission_id, lambda: jobs.get_job_info(submission_id))
    print(f"job {submission_id}: {info.status.value}")
    if info.message:
        print(f"  {redact(info.message).strip()}")
    meta = info.metadata or {}
    if "metaorch_run_id" in meta:
        print(f"  MLflow run: {meta.get('mlflow_run', meta['metaorch_run_id'])}")
    print(f"  entrypoint: {redact(info.entrypoint)}")
    return 0


def logs(submission_id: str, address: str | None, follow_logs: bool) -> int:
    address = job_address(address)
    jobs = connect(address)
    if not follow_logs:
        print(redact(_api(address, submission_id, lambda: jobs.get_job_logs(submission_id))), end="")
        return 0
    _api(address, submission_id, lambda: jobs.get_job_status(submission_id))
    print(f"job {submission_id} {follow(jobs, submission_id)}")
    return 0


def stop(submission_id: str, address: str | None) -> int:
    """SIGTERM to the driver (it saves a checkpoint), SIGKILL after RAY_JOB_STOP_WAIT_TIME_S."""
    address = job_address(address)
    jobs = connect(address)
    if not _api(address, submission_id, lambda: jobs.stop_job(submission_id)):
        print(f"job {submission_id} had already ended: {jobs.get_job_status(submission_id).value}")
        return 0
    final = wait_terminal(jobs, submission_id, timeout_s=STOP_WAIT_S + 30)
    print(f"job {submission_id} {final}")
    run = (jobs.get_job_info(submission_id).metadata or {}).get("metaorch_run_id")
    if run:
        print(f"continue it with: metaorch submit CONFIG --address {address} --resume {run}")
    return 0
