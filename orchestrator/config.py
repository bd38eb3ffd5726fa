"""The job configuration: typed, validated, and the same object for the CLI and the API.

YAML files and ``--set a.b=value`` overrides are merged into a nested dict and validated by
pydantic with unknown keys forbidden, so a typo is an error naming the field, never a
silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from metaorch.algorithms.rl import MAMLTRPOConfig, PEARLConfig, PPOConfig
from metaorch.orchestrator import registry
from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.preflight import redact


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TaskConfig(Section):
    name: registry.TaskName = "sinusoid"  # type: ignore[valid-type]
    options: dict[str, Any] = Field(
        default_factory=dict, description="meta-RL: the environment family's options, e.g. {low: 0, high: 3} for half_cheetah_vel"
    )
    trial_episodes: int | None = Field(None, ge=1, le=10_000, description="rl2: episodes per trial (bandits: pulls)")
    shots: int = Field(10, ge=1, le=10_000, description="K: support examples per task (per class when classifying)")
    queries: int = Field(10, ge=1, le=10_000, description="query examples per task (per class) in meta-training")
    ways: int = Field(5, ge=2, le=10_000, description="N: classes per episode (classification)")
    rotations: bool = Field(True, description="rotations by 90/180/270 degrees as extra classes (Omniglot)")
    shift: int = Field(
        0, ge=0, le=13, description="Omniglot: meta-training drawings moved by up to this many pixels each way (augmentation; 0 = off)"
    )


class DataConfig(Section):
    root: str | None = Field(None, description="directory holding the Omniglot archives or their extracted folders (default: cache_dir)")
    cache_dir: str | None = Field(None, description="preprocessed-array cache (default ~/.cache/metaorch/omniglot)")
    download: bool = Field(False, description="fetch the archives missing from root, SHA-256-checked, from the original repository")
    url: str | None = Field(None, description="download from this base URL (a mirror) instead; else $METAORCH_OMNIGLOT_URL")
    split: Literal["auto"] | dict[Literal["train", "val", "test"], list[str]] = Field(
        "auto", description="'auto' or alphabet names per split: {train: [...], val: [...], test: [...]}"
    )


class ModelConfig(Section):
    hidden: list[int] = Field(default_factory=lambda: [40, 40], description="MLP widths (sinusoid)")
    transductive: bool = Field(
        True, description="Conv-4 batch norm uses query-batch statistics; false: support statistics only"
    )

    @field_validator("hidden")
    @classmethod
    def _positive(cls, hidden: list[int]) -> list[int]:
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError("must be a non-empty list of positive widths")
        return hidden


class AlgorithmConfig(Section):
    name: registry.MethodName = "maml"  # type: ignore[valid-type]
    inner_lr: float = Field(0.01, gt=0, le=10)
    inner_steps: int = Field(1, ge=1, le=1000)
    first_order: bool = Field(False, description="ANIL: drop second-order terms")
    inner_optimizer: Literal["sgd", "adam"] = Field("sgd", description="Reptile: Adam with beta1=0 in the inner loop (Nichol et al.)")
    inner_batch: int | None = Field(
        None, ge=1, description="Reptile: inner mini-batches cycling over support + queries (default: the support set, full batch)"
    )
    carry_inner_state: bool = Field(
        False, description="Reptile with inner_optimizer=adam: the inner Adam's state carries across tasks and iterations (supervised-reptile)"
    )
    fce: bool = Field(False, description="Matching Networks: full context embeddings")
    track_pre: bool = Field(
        True, description="MAML family: also log the query loss/accuracy before adaptation (one more forward per task)"
    )
    vectorize: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="auto: vmap for the MLP, a loop for Conv-4 (vmap's batched convolutions are slower)"
    )


class OuterConfig(Section):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.001, gt=0, le=100)
    final_lr: float | None = Field(None, ge=0, le=100, description="anneal linearly to this (Reptile's epsilon)")
    meta_batch: int = Field(25, ge=1, le=100_000)
    iterations: int = Field(10_000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="training time budget: stop before an iteration that, as long as the last, would end past it")


class WorkersConfig(Section):
    num_workers: int | Literal["auto"] = Field(
        2, description="actor count, or auto: as many as the cluster holds (up to max_workers), growing as nodes join"
    )
    max_workers: int | None = Field(None, ge=1, le=10_000, description="num_workers=auto: at most this many")
    grow_every_s: float = Field(10.0, gt=0, description="a pool below num_workers (auto, min_workers): how often to look for new nodes")
    min_workers: int | None = Field(None, ge=1, le=10_000, description="start once this many fit, growing as nodes join (default: num_workers; auto: 1)")
    wait_for_nodes_s: float = Field(0.0, ge=0, description="how long to wait for an autoscaler to bring up min_workers before exit 2")
    placement: Literal["spread", "pack"] = Field(
        "spread", description="the workers' placement group: spread across nodes (default) or pack onto few"
    )
    shard_timeout_s: float | None = Field(
        None, gt=0, description="a shard running longer is run again on another worker and its worker replaced (default: wait)"
    )
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, le=256, description="torch threads inside each worker")
    chunk_size: int = Field(13, ge=1, description="tasks per vectorised call; fixes the reduction order")
    max_restarts: int = Field(10, ge=0, description="replacements of dead workers before the run fails")
    transport: Literal["calls", "compiled", "inprocess"] = Field(
        "calls",
        description="actor calls + one ray.put, a Ray Compiled Graph (lower latency, alpha API), "
        "or inprocess: one worker computed in the driver (no Ray round trip)",
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        """One message for both forms instead of one per branch of the union."""
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000):
            return value
        raise ValueError("must be an integer from 1 to 10000, or auto")


class RLConfig(Section):
    """Meta-RL hyperparameters: the algorithms' own config classes, so defaults live in one place."""

    maml_trpo: MAMLTRPOConfig = Field(default_factory=MAMLTRPOConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="rl2's PPO")
    pearl: PEARLConfig = Field(default_factory=PEARLConfig)


class EvalConfig(Section):
    tasks: int = Field(600, ge=2)
    steps: list[int] = Field(default_factory=lambda: [1, 5, 10])
    task_params: list[dict[str, Any]] | None = Field(
        None, description="meta-RL: explicit held-out tasks (e.g. [{velocity: 2.5}, ...]) instead of eval.tasks drawn ones"
    )
    episodes: int = Field(3, ge=2, le=10_000, description="pearl: meta-test episodes per task (the first with z from the prior)")
    queries: int = Field(100, ge=1)
    ways: list[int] | None = Field(None, description="classification meta-test N (default: task.ways)")
    shots: list[int] | None = Field(None, description="classification meta-test K (default: task.shots)")
    val_every: int = Field(500, ge=1)
    val_tasks: int = Field(100, ge=2)
    at_end: bool = True
    plot_tasks: int = Field(4, ge=0, le=16)

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or any(s < 0 for s in steps):
            raise ValueError("must be a non-empty list of non-negative step counts")
        return steps

    @field_validator("ways", "shots")
    @classmethod
    def _sizes(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None and (not sizes or any(s < 1 for s in sizes)):
            raise ValueError("must be a non-empty list of positive integers")
        return sizes


class CheckpointConfig(Section):
    every: int = Field(1000, ge=1)
    dir: str = "checkpoints"


MODEL_NAME = r"^[^/:]*[^/:\s][^/:]*$"  # an MLflow registered model's name: not blank, no / or :


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = Field("metaorch", min_length=1)
    run_name: str | None = None
    log_every: int = Field(1, ge=1)
    buffer_max: int = Field(
        10_000, ge=1, description="metric steps held in memory while the server is unreachable; more go to disk until it is back"
    )
    register_as: str | None = Field(
        None, pattern=MODEL_NAME, description="register the model under this name; alias champion moves to it if its meta-test is better"
    )
    system_metrics_s: float = Field(
        10.0, ge=0, description="CPU, memory and GPU of the driver and worker nodes as system/... metrics every this many seconds; 0 = off"
    )

    @field_serializer("uri")
    def _without_password(self, uri: str) -> str:
        """Every written form (MLflow params, config.yaml, checkpoints, ``config show``) hides a password."""
        return redact(uri)


class LearnerConfig(Section):
    placement: Literal["auto", "driver", "actor"] = Field(
        "auto",
        description="where the outer step runs: auto = in the driver, unless the driver's node has no GPU and "
        "another node has one (then an actor there); driver; actor (asks for learner.num_gpus)",
    )
    num_gpus: float = Field(1.0, ge=0, description="GPUs the learner actor asks for")


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster to join: HOST:PORT, ray://..., or auto (a `ray start` cluster on this machine); default: a private local instance"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance (default: all)")


class Config(Section):
    seed: int = Field(0, ge=0, lt=2**63)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    outer: OuterConfig = Field(default_factory=OuterConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def _transport_fits(self) -> None:
        """The compiled graph has no per-shard timeout; inprocess is one worker, never re-run; min_workers fits the pool."""
        w = self.workers
        if w.transport != "calls" and w.shard_timeout_s is not None:
            raise ValueError(f"workers.shard_timeout_s applies to workers.transport=calls, not workers.transport={w.transport}")
        top = w.max_workers if w.num_workers == "auto" else w.num_workers
        if w.min_workers is not None and top is not None and w.min_workers > top:
            raise ValueError(f"workers.min_workers={w.min_workers} exceeds workers.{'max' if w.num_workers == 'auto' else 'num'}_workers={top}")
        if w.transport == "inprocess" and w.num_workers != 1:
            raise ValueError(f"workers.transport=inprocess computes one worker in the driver: workers.num_workers must be 1, not {w.num_workers}")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """Combinations no section can check alone, rejected before anything starts; what
        applies to which method and task family is the registry's."""
        self._transport_fits()
        t, a, e = self.task, self.algorithm.name, self.eval
        family, method = registry.task(t.name), registry.method(a)
        if family.problem not in method.problems:
            raise ValueError(
                f"algorithm.name={a!r} does not apply to task.name={t.name!r} ({family.problem}): "
                f"{t.name} takes {', '.join(registry.methods_for(family.problem))}"
            )
        if t.shift and not family.shift:
            raise ValueError(f"task.shift={t.shift} moves drawings; it does not apply to task.name={t.name!r}")
        if family.problem == "rl":
            return self._consistent_rl(family, method)
        if t.options or t.trial_episodes is not None or e.task_params is not None:
            raise ValueError(f"task.options, task.trial_episodes and eval.task_params apply to meta-RL tasks, not task.name={t.name!r}")
        if not method.inner_optimizer and (self.algorithm.inner_optimizer != "sgd" or self.algorithm.inner_batch is not None):
            takers = ", ".join(m.name for m in registry.METHODS.values() if m.inner_optimizer)
            raise ValueError(f"algorithm.inner_optimizer and algorithm.inner_batch apply to {takers}, not algorithm.name={a!r}")
        if self.algorithm.carry_inner_state and self.algorithm.inner_optimizer != "adam":
            raise ValueError(f"algorithm.carry_inner_state keeps the inner Adam's state: it needs algorithm.inner_optimizer=adam, not {self.algorithm.inner_optimizer}")
        if not family.batch_norm and not self.model.transductive:
            raise ValueError(f"model.transductive=false applies to Conv-4 batch norm; the {t.name} MLP has none")
        if family.needs_data and self.data.root is None and not self.data.download:
            raise ValueError(f"data.root is required for task.name={t.name!r}: the directory holding the archives (or data.download: true)")
        ways = e.ways or [t.ways]
        if family.problem == "classification" and not method.any_ways and ways != [t.ways]:
            raise ValueError(f"eval.ways={ways}: {a} has a {t.ways}-way output layer; only [{t.ways}] is possible")
        most, shots = family.examples_per_class, max(e.shots or [t.shots])
        if most is not None and (t.shots + t.queries > most or shots + e.queries > most):
            raise ValueError(
                f"{t.name} has {most} examples per class: task.shots + task.queries = {t.shots + t.queries} "
                f"and max(eval.shots) + eval.queries = {shots + e.queries} must both be <= {most}"
            )
        return self

    def _consistent_rl(self, family: registry.TaskFamily, method: registry.Method) -> Config:
        t, a = self.task, self.algorithm.name
        if method.trials and t.trial_episodes is None:
            raise ValueError(f"algorithm.name={a!r} needs task.trial_episodes: the episodes of a trial (bandits: pulls)")
        if not method.trials and t.trial_episodes is not None:
            takers = ", ".join(m.name for m in registry.METHODS.values() if m.trials)
            raise ValueError(f"task.trial_episodes applies to {takers}, not algorithm.name={a!r}")
        if method.continuous_actions and family.discrete_actions:
            raise ValueError(f"algorithm.name={a!r} needs continuous actions; task.name={t.name!r} has discrete ones")
        layers = method.hidden_layers
        if layers is not None and len(self.model.hidden) != layers:
            raise ValueError(f"model.hidden={self.model.hidden}: {a} takes {layers} width(s), e.g. [256]")
        moved = [k for k in ("optimizer", "lr", "final_lr") if getattr(self.outer, k) != OuterConfig.model_fields[k].default]
        if moved:
            raise ValueError(f"outer.{moved[0]} does not apply to {a}: its step is set in {method.section}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"algorithm.inner_lr": 0.01, ...}``: the form MLflow params take."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, for example outer.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from exc
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values; nested mappings are merged key by key."""
    merged = dict(base)
    for k, v in over.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{field}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{field}: {msg} (got {err.get('input')!r})" if err["loc"] else msg)
    return f"invalid config {source}: " + "; ".join(lines)


def from_dict(data: dict[str, Any], source: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_error(exc, source)) from None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is ``{}``), read with ``safe_load``;
    ``what`` names the file in errors ("config file", "--runtime-env")."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{what} {path} is not valid YAML: {getattr(exc, 'problem', None) or exc.__class__.__name__}{where}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"{what} {path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or the defaults), apply ``--set`` overrides, validate."""
    data = read_yaml_mapping(path, "config file") if path is not None else {}
    source = "(defaults)" if path is None else str(path)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return from_dict(data, source)
