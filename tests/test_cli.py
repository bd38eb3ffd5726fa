"""Bad input to ``metaorch``: exit code 2 and one line naming the field or value, before anything is taken.

Each kind of bad input runs once through the real CLI in a subprocess, in a fresh directory, and
must come back fast with no traceback, no Ray instance, no MLflow store or run and no checkpoint
directory. Further variants of each kind go through ``orchestrator.cli.main`` in-process (a
subprocess costs seconds of imports each) with the same checks.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from metaorch.orchestrator import cli
from metaorch.orchestrator.config import Config, from_dict, load_config
from metaorch.orchestrator.errors import UserError
from conftest import assert_no_ray_started, free_port, no_ray_env, omniglot_root

ROOT = Path(__file__).resolve().parents[1]
FAST_S = 20.0  # well before Ray's or MLflow's own retries would give up
_HOST_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")

# A few-iteration job; only ever validated here, never run.
TINY = {
    "seed": 0,
    "model": {"hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "outer": {"lr": 0.001, "meta_batch": 4, "iterations": 2},
    "workers": {"num_workers": 1, "num_cpus": 0.5, "chunk_size": 2},
    "eval": {"tasks": 4, "steps": [1], "val_every": 1, "val_tasks": 2, "plot_tasks": 0},
    "checkpoint": {"every": 1},
}


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _check_rejection(cwd: Path, before: set[str], code, out: str, err: str, seconds: float, needles: list[str]) -> str:
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    if error_lines[0].startswith("metaorch: error:"):  # a UserError: that one line and nothing else
        assert err.strip() == error_lines[0], err
    for needle in needles:
        assert needle in error_lines[0], f"{needle!r} is not named in: {error_lines[0]}"
    assert out == "", out
    created = set(os.listdir(cwd)) - before
    assert not created, f"bad input left {sorted(created)} behind"
    for taken in ("mlflow.db", "mlruns", "checkpoints"):
        assert not (cwd / taken).exists()
    assert seconds < FAST_S, f"took {seconds:.1f}s to reject bad input"
    return error_lines[0]


def _metaorch(cwd: Path, args: list[str], ray_tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in _HOST_ENV}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", **no_ray_env(ray_tmp))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "metaorch.orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


@pytest.fixture
def job(tmp_path, monkeypatch) -> Path:
    """A fresh working directory holding ``tiny.yaml``, a valid config, and nothing else."""
    monkeypatch.chdir(tmp_path)
    for name in _HOST_ENV:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return tmp_path


@pytest.fixture
def quiet_logging():
    """``cli.main`` calls ``logging.basicConfig``; undo it so no handler outlives this test's capture."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def main_rejects(job, capsys, quiet_logging, no_ray_start):
    """``metaorch ARGS`` in-process in ``job``: exits 2 at once, naming every needle, starting no Ray."""

    def check(args: list[str], needles: list[str]) -> str:
        before = set(os.listdir(job))
        capsys.readouterr()
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        seconds = time.perf_counter() - t0
        captured = capsys.readouterr()
        return _check_rejection(job, before, exit_info.value.code, captured.out, captured.err, seconds, needles)

    return check


def _write(cwd: Path, name: str, text: str) -> str:
    (cwd / name).write_text(text)
    return name


def _corrupt(cwd: Path) -> str:
    (cwd / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip archive " + bytes(range(256)))
    return "corrupt.pt"


def _foreign(cwd: Path) -> str:
    import torch

    torch.save({"weights": torch.zeros(3)}, cwd / "foreign.pt")
    return "foreign.pt"


def _bad_config_inside(cwd: Path) -> str:
    """A well-formed checkpoint whose embedded config is invalid."""
    import torch

    from metaorch.orchestrator.checkpoint import Checkpoint, save

    state = Checkpoint(3, torch.zeros(4), {}, torch.get_rng_state(), None, "algorithm: {inner_lr: -1}\n")
    return str(save(state, cwd / "ckpts").relative_to(cwd))


def _empty_dir(cwd: Path) -> str:
    (cwd / "run_dir").mkdir()
    return "run_dir"


# --- config values, in-process: orchestrator.config.load_config ----------------------------------

BAD_VALUES = [
    # (id, YAML text or None for tiny.yaml, --set overrides, what the error must name)
    ("unknown-key-file", "algorithm: {inner_lrr: 0.1}\n", [], ["algorithm.inner_lrr", "unknown key"]),
    ("unknown-key-set", None, ["outer.learning_rate=0.1"], ["outer.learning_rate", "unknown key"]),
    ("unknown-section", None, ["optimiser.lr=0.1"], ["optimiser", "unknown key"]),
    ("unknown-task-family", None, ["task.name=half_cheetah"], ["task.name", "half_cheetah"]),
    ("wrong-type-file", "outer: {meta_batch: many}\n", [], ["outer.meta_batch", "many"]),
    ("wrong-type-set", None, ["workers.num_workers=two"], ["workers.num_workers", "two"]),
    ("wrong-type-list", None, ["model.hidden=40"], ["model.hidden", "40"]),
    ("out-of-range-set", None, ["algorithm.inner_lr=-1"], ["algorithm.inner_lr", "-1"]),
    ("out-of-range-file", "workers: {num_workers: 0}\n", [], ["workers.num_workers", "0"]),
    ("infinite", None, ["workers.num_cpus=.inf"], ["workers.num_cpus", "inf"]),
    ("nan", None, ["outer.lr=.nan"], ["outer.lr", "nan"]),
    ("bad-choice", None, ["algorithm.name=sgd"], ["algorithm.name", "sgd"]),
    ("bad-list-item", None, ["eval.steps=[1, -5]"], ["eval.steps", "-5"]),
    ("empty-list", None, ["model.hidden=[]"], ["model.hidden", "[]"]),
    ("rl-task-supervised-algorithm", None, ["task.name=navigation_2d"], ["algorithm.name", "'maml'", "navigation_2d"]),
    ("rl2-without-trials", None, ["task.name=bandit", "algorithm.name=rl2", "model.hidden=[8]"], ["task.trial_episodes"]),
    ("rl-unknown-key", None, ["rl.ppo.lrr=1"], ["rl.ppo.lrr", "unknown key"]),
    ("rl-wrong-type", None, ["rl.maml_trpo.inner_lr=fast"], ["rl.maml_trpo.inner_lr", "fast"]),
    ("pearl-discrete-actions", None, ["task.name=bandit", "algorithm.name=pearl"], ["pearl", "bandit"]),
    ("rl-outer-lr", None, ["task.name=navigation_2d", "algorithm.name=maml_trpo", "outer.lr=0.1"], ["outer.lr", "maml_trpo"]),
    ("rl-options-on-sinusoid", None, ["task.options={arms: 3}"], ["task.options", "sinusoid"]),
    ("shift-on-sinusoid", None, ["task.shift=2"], ["task.shift=2", "sinusoid"]),
    ("mirror-on-sinusoid", None, ["task.mirror=true"], ["task.mirror=true", "sinusoid"]),
    ("shift-too-far", None, ["task.shift=14"], ["task.shift", "14"]),
    ("filters-on-sinusoid", None, ["model.filters=32"], ["model.filters=32", "sinusoid"]),
    ("filters-zero", None, ["model.filters=0"], ["model.filters", "0"]),
    ("fvp-tasks-zero", None, ["task.name=navigation_2d", "algorithm.name=maml_trpo", "rl.maml_trpo.fvp_tasks=0"], ["rl.maml_trpo", "fvp_tasks", "0"]),
]

MALFORMED = [
    ("set-no-equals", None, ["outer.lr"], ["outer.lr", "KEY=VALUE"]),
    ("set-no-key", None, ["=0.1"], ["=0.1", "KEY=VALUE"]),
    ("set-bad-yaml", None, ["outer.lr=[0.1"], ["outer.lr=[0.1", "YAML"]),
    ("set-not-a-section", None, ["outer=1", "outer.lr=0.1"], ["outer.lr=0.1", "outer is not a section"]),
    ("file-bad-yaml", "outer: [1, 2\n", [], ["bad.yaml", "YAML"]),
    ("file-not-a-mapping", "- 1\n- 2\n", [], ["bad.yaml", "mapping", "list"]),
]


@pytest.mark.parametrize("text,overrides,needles", [c[1:] for c in BAD_VALUES + MALFORMED], ids=[c[0] for c in BAD_VALUES + MALFORMED])
def test_load_config_rejects(job, text, overrides, needles):
    path = job / ("tiny.yaml" if text is None else _write(job, "bad.yaml", text))
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text,needle", [(None, "--runtime-env not found"), ("a: [1\n", "is not valid YAML"), ("- 1\n", "expected a mapping at the top level, got list")]
)
def test_runtime_env_file_is_read_like_a_config_file(tmp_path, text, needle):
    """``submit --runtime-env`` shares the config file's reader: the same three errors, naming the flag and the file."""
    from metaorch.orchestrator.jobs import runtime_env

    path = tmp_path / "env.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as info:
        runtime_env(str(path))
    assert needle in str(info.value) and str(path) in str(info.value)
    path.write_text("")  # empty: the defaults only
    assert runtime_env(str(path))["working_dir"] == "."


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_validates_and_round_trips(path):
    """Every ready-to-run YAML loads, and the YAML a run records (params, checkpoints) gives it back."""
    config = load_config(path)
    assert from_dict(yaml.safe_load(config.to_yaml())) == config


def test_load_config_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_applies_overrides(job):
    config = load_config(job / "tiny.yaml", ["outer.lr=0.5", "model.hidden=[4, 4]", "tracking.run_name=x"])
    assert (config.outer.lr, config.model.hidden, config.tracking.run_name) == (0.5, [4, 4], "x")
    assert config.outer.meta_batch == TINY["outer"]["meta_batch"]


# --- each kind of bad input once through the real CLI, in a subprocess --------------------------
# Each subprocess spends seconds importing torch, Ray and MLflow, so all of them are started
# together, two at a time, in their own directories; each test then checks its own.

UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"
SUBPROCESS = [
    # (id, makes whatever the command needs in cwd and returns its arguments, what the error must name)
    ("train-unknown-key", lambda d: ["train", _write(d, "bad.yaml", "algorithm: {inner_lrr: 0.1}\n")], ["algorithm.inner_lrr", "unknown key"]),
    ("train-wrong-type", lambda d: ["train", "tiny.yaml", *_sets("workers.num_workers=two")], ["workers.num_workers", "two"]),
    ("train-out-of-range", lambda d: ["train", "tiny.yaml", *_sets("algorithm.inner_lr=-1")], ["algorithm.inner_lr", "-1"]),
    ("train-missing-config", lambda d: ["train", "nope.yaml"], ["config file not found", "nope.yaml"]),
    ("train-malformed-set", lambda d: ["train", "tiny.yaml", *_sets("outer.lr")], ["outer.lr", "KEY=VALUE"]),
    ("train-resume-missing", lambda d: ["train", "tiny.yaml", "--resume", "missing.pt"], ["missing.pt"]),
    ("train-resume-corrupt", lambda d: ["train", "tiny.yaml", "--resume", _corrupt(d)], ["corrupt.pt", "not a readable metaorch checkpoint"]),
    ("train-unreachable-ray", lambda d: ["train", "tiny.yaml", "--address", f"127.0.0.1:{free_port()}"], ["Ray address 127.0.0.1:", "unreachable"]),
    ("train-unreachable-tracking", lambda d: ["train", "tiny.yaml", "--tracking-uri", f"http://127.0.0.1:{free_port()}"], ["http://127.0.0.1:", "unreachable"]),
    ("eval-missing", lambda d: ["eval", "missing.pt"], ["missing.pt"]),
    ("eval-corrupt", lambda d: ["eval", _corrupt(d)], ["corrupt.pt", "not a readable metaorch checkpoint"]),
    ("config-show-out-of-range", lambda d: ["config", "show", "tiny.yaml", *_sets("algorithm.inner_lr=-1")], ["algorithm.inner_lr", "-1"]),
]
OTHER_RUNS = {
    "config-show": ["config", "show", "tiny.yaml", "--set", "outer.lr=0.5"],
    "eval-unknown-run": ["eval", UNKNOWN_RUN],
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Case id -> (its directory, the entries in it before the run, a future of (process, seconds)).

    Each run has its own Ray temp dir (``RAY_TMPDIR``), checked for a session when it is read.
    """
    runs = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        cases = [(case_id, make) for case_id, make, _ in SUBPROCESS] + [(k, lambda d, a=a: a) for k, a in OTHER_RUNS.items()]
        for case_id, make in cases:
            cwd = tmp_path_factory.mktemp(case_id)
            (cwd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
            args = make(cwd)
            ray_tmp = tmp_path_factory.mktemp("ray")
            runs[case_id] = (cwd, set(os.listdir(cwd)), pool.submit(_ran_without_ray, cwd, args, ray_tmp))
        yield runs
        for *_, future in runs.values():
            future.cancel()


def _ran_without_ray(cwd: Path, args: list[str], ray_tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    result = _metaorch(cwd, args, ray_tmp)
    assert_no_ray_started(ray_tmp)
    return result


@pytest.mark.parametrize("needles", [c[2] for c in SUBPROCESS], ids=[c[0] for c in SUBPROCESS])
def test_cli_rejects_bad_input(cli_runs, request, needles):
    cwd, before, future = cli_runs[request.node.callspec.id]
    proc, seconds = future.result()
    _check_rejection(cwd, before, proc.returncode, proc.stdout, proc.stderr, seconds, needles)


def test_config_show_resolves_overrides(cli_runs):
    cwd, _, future = cli_runs["config-show"]
    proc, _ = future.result()
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.5" in proc.stdout
    shown = yaml.safe_load(proc.stdout)
    assert shown["outer"]["lr"] == 0.5
    assert shown["outer"]["meta_batch"] == TINY["outer"]["meta_batch"]  # from the file
    assert shown["tracking"]["uri"] == "sqlite:///mlflow.db"  # a default
    assert Config.model_validate(shown) == load_config(cwd / "tiny.yaml", ["outer.lr=0.5"])
    assert sorted(os.listdir(cwd)) == ["tiny.yaml"]


CHECK_ONLY = """
import sys
from metaorch.orchestrator import cli
codes = []
for args in (["config", "show", sys.argv[1]], ["train", sys.argv[1], "--set", "outer.lr=-1"]):
    try:
        cli.main(args)
    except SystemExit as exc:
        codes.append(exc.code)
print(codes, sorted(m for m in ("torch", "ray", "mlflow") if m in sys.modules))
"""


def test_checking_a_config_loads_neither_torch_nor_ray_nor_mlflow(tmp_path):
    """``config show`` and a refused config answer in well under a second: the configuration
    (its RL sections included) is plain data, and the algorithms load on first use."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = subprocess.run([sys.executable, "-c", CHECK_ONLY, "tiny.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[0, 2] []", proc.stdout + proc.stderr


def test_unknown_run_id_creates_no_store(cli_runs):
    """``train --resume RUN_ID`` takes the same path (resolve_checkpoint)."""
    cwd, before, future = cli_runs["eval-unknown-run"]
    proc, seconds = future.result()
    _check_rejection(cwd, before, proc.returncode, proc.stdout, proc.stderr, seconds, [UNKNOWN_RUN, "not found"])


# --- more variants of each kind, in-process through orchestrator.cli.main ------------------------


@pytest.mark.parametrize("text,overrides,needles", [c[1:] for c in BAD_VALUES + MALFORMED], ids=[c[0] for c in BAD_VALUES + MALFORMED])
def test_train_rejects_bad_config(job, main_rejects, text, overrides, needles):
    path = "tiny.yaml" if text is None else _write(job, "bad.yaml", text)
    main_rejects(["train", path, *_sets(*overrides)], needles)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["tiny.yaml", *_sets("outer.optimiser=adam")], ["outer.optimiser", "unknown key"]),
        (["tiny.yaml", *_sets("eval.steps=[1, -5]")], ["eval.steps", "-5"]),
        (["nope.yaml"], ["nope.yaml"]),
        (_sets("outer.lr"), ["outer.lr", "KEY=VALUE"]),
    ],
    ids=["unknown-key", "bad-list-item", "missing-file", "malformed-set"],
)
def test_config_show_rejects(main_rejects, args, needles):
    main_rejects(["config", "show", *args], needles)


def test_config_show_defaults(job, capsys, quiet_logging):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["config", "show"])
    assert exit_info.value.code == 0
    assert Config.model_validate(yaml.safe_load(capsys.readouterr().out)) == Config()


CHECKPOINTS = [
    # (id, makes the source in cwd and returns it, what the error must name)
    ("missing-file", lambda d: "missing.pt", ["missing.pt"]),
    ("missing-latest", _empty_dir, ["run_dir", "latest.pt", "not found"]),
    ("corrupt", _corrupt, ["corrupt.pt", "not a readable metaorch checkpoint"]),
    ("foreign", _foreign, ["foreign.pt", "not a metaorch checkpoint"]),
    ("not-a-run-id", lambda d: "0123abc", ["0123abc", "not an MLflow run id"]),
]


@pytest.mark.parametrize("make,needles", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_train_resume_bad_checkpoint(job, main_rejects, make, needles):
    main_rejects(["train", "tiny.yaml", "--resume", make(job)], needles)


@pytest.mark.parametrize(
    "make,needles",
    [c[1:] for c in CHECKPOINTS] + [(_bad_config_inside, ["algorithm.inner_lr", "-1"])],
    ids=[c[0] for c in CHECKPOINTS] + ["invalid-config-inside"],
)
def test_eval_bad_checkpoint(job, main_rejects, make, needles):
    main_rejects(["eval", make(job)], needles)


@pytest.mark.parametrize(
    "address,needles",
    [
        ("ray://127.0.0.1:{port}", ["ray://127.0.0.1:", "unreachable"]),
        ("localhost:{port}", ["localhost:", "unreachable"]),
        ("192.0.2.1:6379", ["192.0.2.1:6379", "unreachable"]),  # TEST-NET-1: no answer, not even a refusal
        ("http://127.0.0.1:8265", ["http://127.0.0.1:8265", "dashboard"]),
        ("no-port-here", ["no-port-here", "HOST:PORT"]),
    ],
    ids=["client-unreachable", "localhost-unreachable", "blackhole", "dashboard-url", "no-port"],
)
def test_train_bad_ray_address(main_rejects, address, needles):
    main_rejects(["train", "tiny.yaml", "--address", address.format(port=free_port())], needles)


def test_train_unreachable_ray_address_from_config_and_env(main_rejects, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    main_rejects(["train", "tiny.yaml", *_sets(f"ray.address={address}")], [address, "unreachable"])
    monkeypatch.setenv("RAY_ADDRESS", address)
    main_rejects(["train", "tiny.yaml"], [address, "unreachable"])


@pytest.mark.parametrize("via", ["config", "eval"])
def test_unreachable_tracking_uri(job, main_rejects, via):
    uri = f"http://127.0.0.1:{free_port()}"
    args = ["train", "tiny.yaml", *_sets(f"tracking.uri={uri}")] if via == "config" else ["eval", _corrupt(job), "--tracking-uri", uri]
    main_rejects(args, [uri, "unreachable"])


def test_train_tracking_uri_in_missing_directory(main_rejects):
    main_rejects(["train", "tiny.yaml", "--tracking-uri", "sqlite:///no/such/dir/mlflow.db"], ["no/such/dir", "does not exist"])


@pytest.mark.parametrize(
    "args,needles",
    [(["--tasks", "1"], ["--tasks", "1"]), (["--tasks", "many"], ["--tasks", "many"]), (["--steps", "1,x"], ["--steps", "1,x"])],
    ids=["tasks-too-few", "tasks-not-int", "steps-not-ints"],
)
def test_eval_bad_arguments(main_rejects, args, needles):
    main_rejects(["eval", "missing.pt", *args], needles)


# --- Omniglot data: bad archives are caught before Ray starts -----------------------------------

OMNIGLOT_TINY = [
    "--set", "task.name=omniglot", "--set", "task.shots=1", "--set", "task.queries=5", "--set", "eval.queries=5",
]  # fmt: skip


def _omniglot_root(job: Path, kind: str) -> str:
    root = job / "omniglot"
    root.mkdir()
    if kind == "corrupt":
        (root / "images_background_small1.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    return str(root)


@pytest.mark.parametrize(
    "kind,extra,needles",
    [
        ("missing", [], ["data.root", "images_background_small1.zip", "images_background.zip"]),
        ("corrupt", [], ["data.root", "images_background_small1.zip"]),
    ],
    ids=["no-archives", "corrupt-zip"],
)
def test_train_rejects_bad_omniglot_data(job, main_rejects, tmp_path_factory, kind, extra, needles):
    root = _omniglot_root(job, kind)
    cache = tmp_path_factory.mktemp("cache")
    main_rejects(["train", "tiny.yaml", *OMNIGLOT_TINY, *_sets(f"data.root={root}", f"data.cache_dir={cache}"), *extra], needles)
    assert not cache.exists() or not any(cache.iterdir()), "a cache was written for bad data"


def test_train_rejects_unknown_alphabet(job, main_rejects, tmp_path_factory):
    shared = omniglot_root()
    split = "data.split={train: [Greek], val: [Latin], test: [Klingon]}"
    main_rejects(["train", "tiny.yaml", *OMNIGLOT_TINY, *_sets(f"data.root={shared}", f"data.cache_dir={tmp_path_factory.mktemp('cache')}", split)], ["Klingon"])


def test_omniglot_without_root_names_the_field(job, main_rejects):
    main_rejects(["train", "tiny.yaml", *OMNIGLOT_TINY], ["data.root"])


def test_registry_names_resolve():
    """Every method's builder and runner and every task family's builder import (the registry
    names them as strings, to stay light); a meta-RL family class carries the name it is registered as."""
    from metaorch.orchestrator import registry

    for method in registry.METHODS.values():
        assert callable(method.builder()) and hasattr(method.runner_class(), "iteration"), method.name
    for family in registry.TASKS.values():
        assert callable(family.builder()), family.name
        if family.problem == "rl":  # an environment family names itself in its error messages
            assert family.builder().name == family.name


def test_train_help_lists_every_method_and_task_family(capsys):
    from metaorch.orchestrator import registry

    with pytest.raises(SystemExit):
        cli.parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in (*registry.METHODS, *registry.TASKS)), out
