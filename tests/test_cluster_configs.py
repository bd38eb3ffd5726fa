"""cluster/: launcher configs, KubeRay manifests, the runtime env and the local dev cluster.

The ``ray up`` configs are validated against the schema the ray package ships
(``ray/autoscaler/ray-schema.json``) and by Ray's own config preparation, which is what
``ray up`` runs before it calls a cloud. The Kubernetes manifests are parsed and checked for
the fields KubeRay requires and for literal secrets. ``cluster/local.sh`` really starts a
head and a worker node on this machine and stops them again, and nothing else.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import free_ports

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
LAUNCHER_CONFIGS = ["aws.yaml", "onprem.yaml"]
KUBERAY = ["raycluster.yaml", "rayjob.yaml", "mlflow.yaml"]
RAYJOB_ENTRYPOINT = "metaorch train configs/sinusoid_maml.yaml --tracking-uri http://mlflow:5000"


def _pin(package: str) -> str:
    """The version spec pyproject.toml pins ``package`` to, e.g. ``==2.13.*``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?\s*(==\s*\S+)", dep.strip())
        if m:
            return m.group(2).replace(" ", "")
    raise AssertionError(f"pyproject.toml pins no {package}")


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d is not None]


def _ray_schema() -> dict:
    return json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())


def _schema_errors(config) -> list[str]:
    validator = jsonschema.Draft7Validator(_ray_schema())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
        for e in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --- ray up configs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_matches_the_schema_ray_ships(name):
    config = _load(name)
    assert isinstance(config, dict)
    assert _schema_errors(config) == []
    # the schema is strict enough to catch a typo (so the check above is not vacuous)
    broken = {**config, "head_node_typ": "head"}
    assert any("head_node_typ" in e for e in _schema_errors(broken))


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_what_ray_up_checks_before_the_cloud(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    for remote, local in prepared["file_mounts"].items():
        if "auth_token" not in remote:  # the token is the user's, never in the repository
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"


def _commands(config: dict, *keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in config.get(key, []))


def test_aws_has_cpu_rollout_and_gpu_learner_node_types():
    config = _load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "worker actors must not land on the head"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    cpu = {k: v for k, v in workers.items() if k not in gpu}
    assert gpu and cpu
    for name, node in gpu.items():
        assert node["resources"].get("learner") == 1, name
        assert node["docker"]["worker_image"].endswith("-gpu"), name
    for name, node in {**cpu, "head": head}.items():
        assert "learner" not in node["resources"], name
    assert any(node.get("min_workers", 0) >= 1 for node in cpu.values()), "a rollout node kept up: the default pool does not wait for the autoscaler (workers.wait_for_nodes_s: 0)"
    ray_version = _pin("ray").removeprefix("==")
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_version}-")
    for node in gpu.values():
        assert node["docker"]["worker_image"].startswith(f"rayproject/ray:{ray_version}-")
    torch = f'"torch{_pin("torch")}"'
    assert torch in _commands(config, "setup_commands")
    for name, node in gpu.items():  # its own commands replace setup_commands
        assert torch in "\n".join(node["worker_setup_commands"]), name


def test_onprem_uses_placeholder_addresses_and_marks_gpu_machines_as_learners():
    config = _load("onprem.yaml")
    provider = config["provider"]
    assert provider["type"] == "local"
    assert "available_node_types" not in config  # Ray builds the one local node type itself
    doc_net = ipaddress.ip_network("192.0.2.0/24")  # RFC 5737: documentation only
    for ip in [provider["head_ip"], *provider["worker_ips"]]:
        assert ipaddress.ip_address(ip) in doc_net, ip
    assert f'"torch{_pin("torch")}"' in _commands(config, "setup_commands")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = _commands(config, key)
        assert "nvidia-smi" in start and '{"learner": 1}' in start, key


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_binds_dashboard_to_loopback_and_uses_token_auth(name):
    config = _load(name)
    text = (CLUSTER / name).read_text()
    assert "0.0.0.0" not in text
    head = _commands(config, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config[key]:
            if " start " in cmd:
                assert "RAY_AUTH_MODE=token" in cmd, f"{key}: {cmd}"
    assert "~/.ray/auth_token" in config["file_mounts"]
    for secret in (r"AKIA[0-9A-Z]{16}", r"-----BEGIN", r"aws_secret_access_key", r"aws_access_key_id"):
        assert not re.search(secret, text, re.I), secret
    assert list(_literal_secrets(config)) == []


# --- Kubernetes manifests ------------------------------------------------------------------

SECRET_ENV = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|API_KEY|STORE_URI|DATABASE_URL", re.I)
SECRET_FIELD = re.compile(r"(password|passwd|token|auth_?token|secret|secret_?key|access_?key|api_?key|private_?key|credentials?)", re.I)
URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def _literal_secrets(node, path: str = "$"):
    """Places where a manifest or config spells out a secret instead of referring to one."""
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            yield f"{path}: a Secret with literal data"
        name = node.get("name")
        if isinstance(name, str) and ("value" in node or "valueFrom" in node) and SECRET_ENV.search(name):
            if "secretKeyRef" not in (node.get("valueFrom") or {}):
                yield f"{path}: env {name} must come from valueFrom.secretKeyRef"
        for key, value in node.items():
            if isinstance(key, str) and SECRET_FIELD.fullmatch(key) and isinstance(value, (str, int)) and value != "":
                yield f"{path}.{key}: a literal {key}"
            yield from _literal_secrets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _literal_secrets(value, f"{path}[{i}]")
    elif isinstance(node, str) and URI_WITH_PASSWORD.search(node):
        yield f"{path}: a URI with a password"


def test_secret_detector_flags_literal_secrets():
    bad = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"a": "b"}},
        {"env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]},
        {"env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        {"args": ["--backend-store-uri=postgresql://mlflow:hunter2@db:5432/mlflow"]},
        {"auth": {"password": "hunter2"}},
    ]
    for doc in bad:
        assert list(_literal_secrets(doc)), doc
    good = {"env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "RAY_AUTH_MODE", "value": "token"}], "authOptions": {"mode": "token"}}
    assert list(_literal_secrets(good)) == []


@pytest.mark.parametrize("name", KUBERAY)
def test_kubernetes_manifest_parses_and_holds_no_literal_secret(name):
    docs = _docs(name)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
        assert list(_literal_secrets(doc)) == []
        if doc["kind"] == "RayJob":
            assert list(_literal_secrets(yaml.safe_load(doc["spec"]["runtimeEnvYAML"]))) == []
    assert "-----BEGIN" not in (CLUSTER / "kuberay" / name).read_text()


def _string_map(value, where: str) -> dict:
    assert isinstance(value, dict), f"{where} must be a mapping"
    for k, v in value.items():  # KubeRay's CRD: map[string]string
        assert isinstance(k, str) and isinstance(v, str), f"{where}.{k}: {v!r} must be a string"
    return value


def _containers(template: dict, where: str) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: container without name or image"
        for env in c.get("env", []):
            assert env.get("name") and ("value" in env or "valueFrom" in env), f"{where}: env {env}"
    return containers


def _custom_resources(params: dict) -> dict:
    """rayStartParams.resources, in KubeRay's format: a JSON string inside a JSON string."""
    raw = params.get("resources")
    if raw is None:
        return {}
    inner = json.loads(raw)
    return json.loads(inner) if isinstance(inner, str) else inner


def _check_ray_cluster_spec(spec: dict, where: str) -> dict:
    assert spec["rayVersion"] == _pin("ray").removeprefix("=="), f"{where}: rayVersion must match the ray pin"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication"
    head = spec["headGroupSpec"]
    _string_map(head["rayStartParams"], f"{where}.headGroupSpec.rayStartParams")
    _containers(head["template"], f"{where}.headGroupSpec")
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head Service must stay in-cluster"
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    learners = 0
    for g in groups:
        w = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        assert isinstance(g["groupName"], str) and g["groupName"]
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g[key], int) and g[key] >= 0, f"{w}.{key}"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], w
        params = _string_map(g["rayStartParams"], f"{w}.rayStartParams")
        containers = _containers(g["template"], w)
        gpus = int(params.get("num-gpus", "0"))
        limit = containers[0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert gpus == int(limit or 0), f"{w}: num-gpus and the nvidia.com/gpu limit disagree"
        custom = _custom_resources(params)
        if gpus:
            assert custom == {"learner": 1}, f"{w}: GPU groups advertise learner: 1"
            learners += 1
        else:
            assert "learner" not in custom, w
    assert learners >= 1, f"{where}: no GPU learner group"
    assert any(not int(g["rayStartParams"].get("num-gpus", "0")) and g["minReplicas"] >= 1 for g in groups), (
        f"{where}: keep CPU rollout workers up (metaorch does not wait for the autoscaler)"
    )
    return spec


def test_raycluster_has_what_kuberay_requires():
    (rc,) = _docs("raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = _check_ray_cluster_spec(rc["spec"], "RayCluster")
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_rayjob_runs_metaorch_with_the_learner_on_the_gpu_group():
    (job,) = _docs("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"] == RAYJOB_ENTRYPOINT
    assert (ROOT / spec["entrypoint"].split()[2]).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    if "rayClusterSpec" in spec:
        _check_ray_cluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec")
    assert json.loads(spec["entrypointResources"]) == {"learner": 1}
    assert spec["entrypointNumGpus"] >= 1  # else Ray hides the GPU from the driver
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= _runtime_env_fields()
    # --tracking-uri http://mlflow:5000 is the Service of mlflow.yaml
    services = {d["metadata"]["name"]: d for d in _docs("mlflow.yaml") if d["kind"] == "Service"}
    assert any(p["port"] == 5000 for p in services["mlflow"]["spec"]["ports"])


def test_mlflow_server_has_database_from_secret_and_allowed_hosts():
    docs = _docs("mlflow.yaml")
    by_kind: dict[str, dict] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployment = by_kind["Deployment"]["mlflow"]
    (server,) = _containers(deployment["spec"]["template"], "Deployment mlflow")
    argv = [*server.get("command", []), *server.get("args", [])]
    assert argv[:2] == ["mlflow", "server"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    hosts = flags["allowed-hosts"].split(",")
    assert hosts and "*" not in hosts and "mlflow:5000" in hosts
    assert "*" not in flags.get("cors-allowed-origins", "")
    assert "--disable-security-middleware" not in argv and "gunicorn-opts" not in flags
    assert "backend-store-uri" not in flags, "the database URI holds a password: take it from a Secret"
    env = {e["name"]: e for e in server["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env
    assert server["image"].endswith(_pin("mlflow").removeprefix("==") + "-full")  # -full has psycopg2
    service = by_kind["Service"]["mlflow"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    postgres = by_kind["StatefulSet"]["mlflow-postgres"]
    (db,) = _containers(postgres["spec"]["template"], "StatefulSet mlflow-postgres")
    db_env = {e["name"]: e for e in db["env"]}
    assert "secretKeyRef" in db_env["POSTGRES_PASSWORD"]["valueFrom"]
    assert set(by_kind.get("NetworkPolicy", {})) == {"mlflow", "mlflow-postgres"}


# --- runtime_env.yaml ----------------------------------------------------------------------


def _runtime_env_fields() -> set[str]:
    from ray.runtime_env import RuntimeEnv

    return {f for f in RuntimeEnv.known_fields if not f.startswith("_")}


def test_runtime_env_is_valid_and_excludes_local_state():
    from ray.runtime_env import RuntimeEnv

    env = _load("runtime_env.yaml")
    assert isinstance(env, dict)
    assert set(env) <= _runtime_env_fields(), set(env) - _runtime_env_fields()
    assert env["working_dir"] == "."
    excluded = {e.strip("/") for e in env["excludes"]}
    assert {".venv", "mlflow.db", "checkpoints", "mlruns", ".git"} <= excluded
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items())
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    RuntimeEnv(**env)  # Ray's own validation
    assert list(_literal_secrets(env)) == []


def test_runtime_env_package_leaves_out_the_excluded_paths(tmp_path):
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    env = _load("runtime_env.yaml")
    package = tmp_path / "pkg.zip"
    # include_gitignore=False: the excludes alone must keep local state out.
    packaging.create_package(str(ROOT), package, include_gitignore=False, excludes=env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    assert "configs/sinusoid_maml.yaml" in names and "orchestrator/cli.py" in names
    for name in names:
        top = name.split("/")[0]
        assert top not in {".venv", ".git", "mlruns", "mlartifacts", "checkpoints", "mlflow.db"}, name
        assert "__pycache__" not in name, name
    assert package.stat().st_size < packaging.GCS_STORAGE_MAX_SIZE


# --- local.sh ------------------------------------------------------------------------------


def _script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_BIN": str(Path(sys.executable).parent / "ray")}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _local_sh(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SH), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_local_sh_is_valid_bash_and_rejects_bad_input():
    assert os.access(LOCAL_SH, os.X_OK)
    assert LOCAL_SH.read_text().startswith("#!/usr/bin/env bash\n")
    syntax = subprocess.run(["bash", "-n", str(LOCAL_SH)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    env = _script_env()
    assert _local_sh("--help", env=env).returncode == 0
    assert _local_sh("restart", env=env).returncode == 2
    bad = _local_sh("up", "two", env=env)
    assert bad.returncode == 1 and "N must be" in bad.stderr
    assert _local_sh("up", "--port", "x", env=env).returncode == 1
    # nothing to stop is not an error; an unknown cluster has no status
    missing = "/tmp/mo-missing-cluster"
    assert _local_sh("down", "--dir", missing, env=env).returncode == 0
    assert _local_sh("status", "--dir", missing, env=env).returncode == 1


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_naming(text: str) -> dict[int, str]:
    found = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found[int(p.name)] = cmdline
    return found


NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU", 0),
                   "learner": n["Resources"].get("learner", 0)} for n in nodes]))
"""


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_local_sh_starts_a_head_and_a_worker_node_and_stops_only_them(tmp_path):
    port, dashboard_port, client_port = free_ports(3)
    # Short: Ray's socket paths under --temp-dir must fit in 107 bytes (tmp_path is too long).
    state = Path(tempfile.mkdtemp(prefix="mo-", dir="/tmp"))
    where = ["--port", str(port), "--dir", str(state)]
    # A process named like Ray's that is not this cluster's: `ray stop` would kill it.
    decoy_exe = tmp_path / "raylet"
    decoy_exe.symlink_to(shutil.which("sleep"))
    decoy = subprocess.Popen([str(decoy_exe), "600"], start_new_session=True)
    env = _script_env()
    env.pop("RAY_AUTH_MODE", None)  # local.sh sets "disabled" when the user has not chosen
    client_env = _script_env(RAY_AUTH_MODE="disabled")
    try:
        comm = Path(f"/proc/{decoy.pid}/comm")
        deadline = time.monotonic() + 10  # Popen returns between fork and exec; a busy machine shows "python" a while
        while comm.read_text().strip() != "raylet" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert comm.read_text().strip() == "raylet"
        up = _local_sh("up", "1", *where, "--head-cpus", "1", "--worker-cpus", "1",
                       "--dashboard-port", str(dashboard_port), "--client-port", str(client_port),
                       "--object-store-mb", "100", "--timeout", "120", env=env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        address = f"127.0.0.1:{port}"
        assert f"RAY_ADDRESS={address}" in up.stdout
        assert f"http://127.0.0.1:{dashboard_port}" in up.stdout
        assert "(auth: disabled)" in up.stdout
        leaders = [int((state / f).read_text()) for f in ("head.pid", "worker-1.pid")]
        assert all(_running(pid) for pid in leaders)

        seen = subprocess.run([sys.executable, "-c", NODES, address], env=client_env, capture_output=True,
                              text=True, timeout=180)
        assert seen.returncode == 0, seen.stdout + seen.stderr
        nodes = json.loads(seen.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, nodes
        assert sorted(n["cpu"] for n in nodes) == [1.0, 1.0]
        assert sorted(n["learner"] for n in nodes) == [0, 1.0]  # the head advertises learner: 1

        # the dashboard / job API answers on loopback only
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/version", timeout=10) as r:
            assert r.status == 200
        for ip in {n["ip"] for n in nodes} - {"127.0.0.1"}:
            assert not _connects(ip, dashboard_port), f"dashboard reachable on {ip}"

        status = _local_sh("status", *where, env=env, timeout=120)
        assert status.returncode == 0 and "head: running" in status.stdout, status.stdout + status.stderr

        down = _local_sh("down", *where, env=env, timeout=200)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [pid for pid in leaders if _running(pid)]
        assert _processes_naming(str(state)) == {}
        assert decoy.poll() is None, "down stopped a process that is not this cluster's"
        assert _local_sh("status", *where, env=env).returncode == 1
    finally:
        _local_sh("down", *where, env=env, timeout=200)
        for pid in _processes_naming(str(state)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        decoy.kill()
        decoy.wait()
        shutil.rmtree(state, ignore_errors=True)


def test_local_sh_down_after_the_processes_are_gone_touches_nothing_else():
    """Stale PID files (a reboot, a kill -9) must not make `down` signal whoever has that PID now."""
    state = Path(tempfile.mkdtemp(prefix="mo-", dir="/tmp"))
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        (state / ".metaorch-local-cluster").touch()  # what `up` leaves
        (state / "head.pid").write_text("999999999\n")
        (state / "worker-1.pid").write_text(f"{bystander.pid}\n")  # alive, but not this cluster's
        started = time.monotonic()
        down = _local_sh("down", "--dir", str(state), env=_script_env())
        assert down.returncode == 0, down.stderr
        assert time.monotonic() - started < 10
        assert bystander.poll() is None
        assert not (state / "head.pid").exists()
        # a directory `up` did not make is left alone
        (state / ".metaorch-local-cluster").unlink()
        (state / "head.pid").write_text(f"{bystander.pid}\n")
        assert _local_sh("down", "--dir", str(state), env=_script_env()).returncode == 0
        assert (state / "head.pid").exists() and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        shutil.rmtree(state, ignore_errors=True)
