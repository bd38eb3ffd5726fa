"""The job configuration: typed, validated, and the same object for the CLI and the API.

YAML files and ``--set a.b=value`` overrides are merged into a nested dict and validated by
pydantic with unknown keys forbidden, so a typo is an error naming the field, never a
silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from metaorch.orchestrator import registry
from metaorch.orchestrator.config_sections import (
    Section,
    TaskConfig,
    DataConfig,
    ModelConfig,
    AlgorithmConfig,
    OuterConfig,
    WorkersConfig,
    RLConfig,
    EvalConfig,
    CheckpointConfig,
    TrackingConfig,
    LearnerConfig,
    RayConfig,
)
from metaorch.orchestrator.errors import UserError


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
        if family.model != "conv4" and self.model.filters != ModelConfig.model_fields["filters"].default:
            raise ValueError(f"model.filters={self.model.filters} sets Conv-4's width; task.name={t.name!r} has no Conv-4")
        if not family.augments:
            if t.shift:
                raise ValueError(f"task.shift={t.shift} moves drawings; it does not apply to task.name={t.name!r}")
            if t.mirror:
                raise ValueError(f"task.mirror=true mirrors drawings; it does not apply to task.name={t.name!r}")
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
