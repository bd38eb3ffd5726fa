"""The logged MLflow model is a package a user can load: its requirements name metaorch at
this version, and a fresh virtual environment with only those requirements loads it (a pyfunc
from code, no pickle), adapts it in Python and predicts through the pyfunc."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from metaorch.orchestrator.components import build_components
from metaorch.tasks.base import descriptors

LOAD = """
import json, sys
import mlflow.pyfunc, torch
loaded = mlflow.pyfunc.load_model(sys.argv[1])
model = loaded.unwrap_python_model().model
x, sx, sy = (torch.tensor(v) for v in json.loads(sys.argv[2]))
with torch.no_grad():
    before = model(x)
after = model.adapt(sx, sy)(x).detach()
served = loaded.predict({"support_x": sx.numpy(), "support_y": sy.numpy(), "query_x": x.numpy()})
print(json.dumps({"before": before.tolist(), "after": after.tolist(), "served": served.tolist(), "module": type(model).__module__}))
"""


@pytest.mark.slow
def test_the_model_loads_in_a_fresh_environment_with_only_its_requirements(ray_session, workdir, tmp_path):
    import metaorch
    from mlflow.artifacts import download_artifacts

    from metaorch.orchestrator.packaging import source_wheel
    from metaorch.orchestrator.trainer import train

    wheels = tmp_path / "wheels"
    source_wheel(wheels)  # metaorch is not on the package index: pip finds this version here
    config = tiny_config(outer={"iterations": 5}, eval={"at_end": False, "plot_tasks": 0})
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    result = train(config, tracking_uri=store, progress=False)
    model_dir = Path(download_artifacts(f"runs:/{result.run_id}/model", tracking_uri=store, dst_path=str(tmp_path / "model")))
    assert not [p.name for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".pth")]

    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"metaorch=={metaorch.__version__}" in requirements, requirements
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("mlflow==") for r in requirements)

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)  # no system site-packages: only what the model asks for
    python = str(fresh / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--find-links", str(wheels), "-r", str(model_dir / "requirements.txt")]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]

    family, learner = build_components(config)
    batch = family.batch(descriptors(config.seed, "test", 0, 1))
    x, sx, sy = torch.linspace(-5, 5, 20).unsqueeze(-1), batch["support_x"][0], batch["support_y"][0]
    inputs = json.dumps([x.tolist(), sx.tolist(), sy.tolist()])
    proc = subprocess.run([python, "-c", LOAD, str(model_dir), inputs], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["module"].startswith("metaorch.algorithms.")
    assert str(fresh) in subprocess.run([python, "-c", "import metaorch; print(metaorch.__file__)"], capture_output=True, text=True, cwd=tmp_path).stdout

    weights = learner.weights(result.meta_params)
    want_after = learner.model(learner.adapt(result.meta_params, sx, sy, config.algorithm.inner_steps), x).detach()
    torch.testing.assert_close(torch.tensor(got["before"]), learner.model(weights, x).detach())
    torch.testing.assert_close(torch.tensor(got["after"]), want_after, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["served"]), want_after, rtol=1e-4, atol=1e-5)
