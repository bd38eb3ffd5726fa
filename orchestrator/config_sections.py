"""The sections of a job configuration, one pydantic model each (``task``, ``data``, ...).

Unknown keys are forbidden in every section, so a typo is an error naming the field; checks
that involve two sections or the registry's knowledge of a method are ``Config``'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from metaorch.algorithms.rl.config import MAMLTRPOConfig, PPOConfig
from metaorch.algorithms.rl.pearl.config import PEARLConfig
from metaorch.orchestrator import registry
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
    mirror: bool = Field(False, description="Omniglot: each training character's mirror image is a class of its own (val and test untouched)")


class DataConfig(Section):
    root: str | None = Field(None, description="directory holding the Omniglot archives or their extracted folders (default: cache_dir)")
    cache_dir: str | None = Field(None, description="preprocessed-array cache (default ~/.cache/metaorch/omniglot)")
    download: bool = Field(False, description="fetch the archives missing from root, SHA-256-checked, from the original repository")
    url: str | None = Field(None, description="download from this base URL (a mirror) instead; else $METAORCH_OMNIGLOT_URL")
    split: Literal["auto"] | dict[Literal["train", "val", "test"], list[str]] = Field(
        "auto",
        description="'auto' or alphabet names per split: {train: [...], val: [...], test: [...]}; "
        "val empty or left out: no meta-validation (train on train + val, as Snell et al.'s final models)",
    )

    @property
    def validates(self) -> bool:
        """Whether there is a validation split to meta-validate on (an explicit split may leave it empty)."""
        return self.split == "auto" or bool(self.split.get("val"))


class ModelConfig(Section):
    hidden: list[int] = Field(default_factory=lambda: [40, 40], description="MLP widths (sinusoid)")
    transductive: bool = Field(
        True, description="Conv-4 batch norm uses query-batch statistics; false: support statistics only"
    )
    filters: int = Field(64, ge=1, le=1024, description="Conv-4 channels per block, so its embedding size (Omniglot; the papers: 64)")

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
    scale: float = Field(1.0, gt=0, le=1000, description="Matching Networks: cosines are multiplied by this before the softmax (1: the paper)")
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
    max_minutes: float | None = Field(None, gt=0, description="training time budget: stop before an iteration that, as long as the last (plus a due checkpoint), would end past it")


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
