"""The MLflow UI of a metaorch demo store, as its users see it: screenshots with headless Chromium.

Not CI. Starts ``mlflow server`` on 127.0.0.1 over a fresh store, trains a tiny sinusoid MAML
job through it with ``tracking.register_as`` and runs a tiny ``metaorch tune`` search (two
trials), then saves one PNG per page:

    mlflow_run.png               the training run's overview (logged model, registered model, source, dataset)
    mlflow_model.png             the run's logged model (its page under the experiment's Models)
    mlflow_registered_model.png  the registered model's versions and alias
    mlflow_tune.png              the tune parent run: its trials (child runs) and best figures

    python bench/mlflow_ui_screenshots.py [--out docs/img] [--width 1560] [--height 900] [--crop-right 400]

Needs the ``chromium`` binary (Debian: ``apt-get install -y chromium``). The PNGs are reduced to
a 128-colour palette (Pillow) so they stay small enough to commit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_env  # noqa: E402,F401  (Ray's and MLflow's environment, before either loads)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port  # noqa: E402

MODEL = "sinusoid-maml"
TINY = [
    "outer.iterations=300", "outer.meta_batch=10", "workers.num_workers=1", "workers.chunk_size=10",
    "eval.tasks=100", "eval.val_every=100", "eval.val_tasks=20", "checkpoint.every=1000",
    "tracking.system_metrics_s=1",
]


def start_server(store: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over a sqlite store; artifacts served through it."""
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
        "--workers", "1",
    ]
    proc = subprocess.Popen(cmd, cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"mlflow server did not answer on 127.0.0.1:{port} within 120 s")


def demo(uri: str, work: Path) -> dict[str, str]:
    """A trained and registered sinusoid run and a two-trial tune search; the pages to shoot."""
    import ray

    from metaorch.orchestrator.config import load_config
    from metaorch.orchestrator.mlflow_client import client
    from metaorch.orchestrator.trainer import train
    from metaorch.orchestrator.tune import tune

    sets = [*TINY, f"checkpoint.dir={work / 'checkpoints'}"]
    config = load_config(ROOT / "configs" / "sinusoid_maml.yaml", [*sets, f"tracking.register_as={MODEL}", "tracking.run_name=demo"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        run = train(config, tracking_uri=uri, progress=False)
        tune_config = load_config(ROOT / "configs" / "sinusoid_maml.yaml", [*sets, "outer.iterations=200", "tracking.experiment=sinusoid-tune"])
        searched = tune(tune_config, {"algorithm.inner_lr": {"grid": [0.01, 0.001]}}, max_concurrent=1, tracking_uri=uri, progress=False)
    finally:
        ray.shutdown()
    c = client(uri)
    experiment = c.get_run(run.run_id).info.experiment_id
    models = c.search_logged_models([experiment], filter_string=f"source_run_id = '{run.run_id}'")
    tune_experiment = c.get_run(searched.run_id).info.experiment_id
    pages = {
        "run": f"#/experiments/{experiment}/runs/{run.run_id}",
        "registered_model": f"#/models/{MODEL}",
        "tune": f"#/experiments/{tune_experiment}/runs/{searched.run_id}",
    }
    if models:
        pages["model"] = f"#/experiments/{experiment}/models/{models[0].model_id}"
    # The sidebar's GenAI / Model training switch is the browser's choice (localStorage, GenAI on a
    # fresh profile), whatever the experiment's kind; this parameter picks Model training.
    return {name: f"{route}?workflowType=machine_learning" for name, route in pages.items()}


def shoot(chromium: str, url: str, png: Path, width: int, height: int) -> None:
    """One page after the UI's scripts have run (virtual time lets its requests finish)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "--virtual-time-budget=20000", f"--screenshot={png}", url],
            check=True, capture_output=True, timeout=120,
        )


def shrink(png: Path, crop_right: int, colours: int = 128) -> int:
    """Without the right ``crop_right`` pixels (the MLflow Assistant panel, which opens by itself on a
    fresh browser profile), as a palette PNG: UI screenshots have few colours, so this keeps them
    sharp at a fraction of the size."""
    from PIL import Image

    with Image.open(png) as image:
        kept = image.convert("RGB").crop((0, 0, image.width - crop_right, image.height))
        kept.quantize(colours, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    return png.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--width", type=int, default=1560)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--crop-right", type=int, default=400, help="pixels cut off the right (the assistant panel); 0 keeps it")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        server = start_server(work, port)
        try:
            pages = demo(f"http://127.0.0.1:{port}", work)
            for name, route in pages.items():
                png = out / f"mlflow_{name}.png"
                shoot(chromium, f"http://127.0.0.1:{port}/{route}", png, args.width, args.height)
                print(f"{png}: {shrink(png, args.crop_right) // 1024} KiB  ({route})", flush=True)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
