"""A logged model served by ``mlflow models serve`` answers a support set and queries with the
adapted predictions: a sinusoid model (regression values) and an Omniglot MAML model (class
scores), each behind a real server process on 127.0.0.1, asked over HTTP as a curl user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import OMNIGLOT, answers, free_port, omniglot_root, stop_group, tiny_config

from metaorch.orchestrator.components import build_components
from metaorch.orchestrator.config import from_dict
from metaorch.tasks.base import descriptors


def _omniglot_config(cache: Path, checkpoints: Path):
    base = {
        "task": {"name": "omniglot", "ways": 5, "shots": 1, "queries": 2},
        "data": {"root": str(OMNIGLOT), "cache_dir": str(cache)},
        "algorithm": {"name": "maml", "inner_steps": 1, "first_order": True},
        "outer": {"iterations": 1, "meta_batch": 2},
        "workers": {"num_workers": 1, "num_cpus": 0.5, "chunk_size": 2},
        "eval": {"at_end": False, "queries": 2, "steps": [1], "val_every": 10**6, "val_tasks": 2},
        "checkpoint": {"every": 10**6, "dir": str(checkpoints)},
    }
    return from_dict(base, "(test)")


@pytest.fixture(scope="module")
def served(ray_session, mlflow_service, omniglot_cache, tmp_path_factory):
    """Two tiny runs logged to the session's MLflow server, each served by its own
    ``mlflow models serve`` (started together). ~45 s on the shared 2-core machine: ~25 s the two
    trainings, ~20 s the servers' start (each imports torch, MLflow and metaorch)."""
    from metaorch.orchestrator.trainer import train

    omniglot_root()
    root = tmp_path_factory.mktemp("serving")
    sine = tiny_config(outer={"iterations": 2}, eval={"at_end": False, "plot_tasks": 0}, checkpoint={"dir": str(root / "checkpoints")})
    omni = _omniglot_config(omniglot_cache, root / "checkpoints")
    runs = {name: (cfg, train(cfg, tracking_uri=mlflow_service.url, progress=False)) for name, cfg in (("sine", sine), ("omniglot", omni))}
    exe = str(Path(sys.executable).parent / "mlflow")
    # the venv's bin first, as for a user who activated it: the server runs its ``uvicorn``
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_service.url, "PATH": f"{Path(exe).parent}{os.pathsep}{os.environ['PATH']}"}
    servers = {}
    try:
        for name, (_, result) in runs.items():
            port = free_port()
            cmd = [exe, "models", "serve", "-m", f"runs:/{result.run_id}/model", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
            log = open(root / f"{name}.log", "wb")
            servers[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True), f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 180
        for name, (proc, url) in servers.items():
            while not answers(url + "/ping"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve for {name} did not come up:\n{(root / f'{name}.log').read_text(errors='replace')[-3000:]}")
                time.sleep(0.25)
        yield {name: (cfg, result, servers[name][1]) for name, (cfg, result) in runs.items()}
    finally:
        for proc, _ in servers.values():
            stop_group(proc)


def _post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _episode(config) -> dict[str, torch.Tensor]:
    family, _ = build_components(config)
    return {k: v[0] for k, v in family.batch(descriptors(config.seed, "test", 0, 1)).items()}


def test_a_sinusoid_model_answers_with_the_adapted_predictions(served):
    config, result, url = served["sine"]
    _, learner = build_components(config)
    ep = _episode(config)
    body = {"inputs": {"support_x": ep["support_x"].tolist(), "support_y": ep["support_y"].tolist(), "query_x": ep["query_x"].tolist()}}
    for steps in (None, 3):  # the trained inner steps, then more, asked for in the request's params
        status, got = _post(url, body if steps is None else body | {"params": {"steps": steps}})
        assert status == 200, got
        adapted = learner.adapt(result.meta_params, ep["support_x"], ep["support_y"], steps or config.algorithm.inner_steps)
        want = learner.model(adapted, ep["query_x"]).detach()
        torch.testing.assert_close(torch.tensor(got["predictions"]), want, rtol=1e-4, atol=1e-5)


def test_an_omniglot_model_answers_with_class_scores(served):
    config, result, url = served["omniglot"]
    _, learner = build_components(config)
    ep = _episode(config)
    body = {"inputs": {"support_x": ep["support_x"].tolist(), "support_y": ep["support_y"].tolist(), "query_x": ep["query_x"].tolist()}}
    status, got = _post(url, body)
    assert status == 200, got
    scores = torch.tensor(got["predictions"])
    assert scores.shape == (ep["query_x"].shape[0], config.task.ways)
    want = learner.query_logits(result.meta_params, ep["support_x"], ep["support_y"], ep["query_x"], config.algorithm.inner_steps).detach()
    torch.testing.assert_close(scores, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "model, change, says",
    [
        ("sine", {"query_x": None}, "query_x"),  # an input left out
        ("sine", {"support_y": [[0.0]]}, "support_x has 10 rows and support_y 1"),
        ("sine", {"query_x": [[0.0, 1.0]]}, "query_x"),  # a row of the wrong shape
        ("omniglot", {"support_y": [0, 1, 2, 3, 9]}, "labels 0..4"),
    ],
)
def test_a_bad_request_gets_a_400_that_says_what_is_wrong(served, model, change, says):
    config, _, url = served[model]
    ep = _episode(config)
    inputs = {k: ep[k].tolist() for k in ("support_x", "support_y", "query_x")} | change
    status, got = _post(url, {"inputs": {k: v for k, v in inputs.items() if v is not None}})
    assert status == 400, got
    assert got["error_code"] == "INVALID_PARAMETER_VALUE" and says in got["message"], got
    assert "stack_trace" not in got and "Traceback" not in got["message"]
