"""The logged model as MLflow sees it: a pyfunc that adapts to a support set and predicts.

A logged model holds no pickle. It is MLflow "models from code": the code file
(:mod:`orchestrator.mlflow_model`, which only hands MLflow a :class:`MetaorchModel`), the
run's ``config.yaml`` and its flat meta-parameters as a plain tensor file
(``torch.load(weights_only=True)``). Loading rebuilds the method from the config with the
same builders training used and exports it, so the model is exactly what the learner
meta-tests: a :class:`algorithms.meta_model.MetaModel` (``adapt(x, y)``) or an
:class:`algorithms.episodic.EpisodicModel` for supervised methods, the policy and its
parameters for meta-RL.

A request (``POST /invocations``) carries one episode::

    {"inputs": {"support_x": [[-1.0], [0.5]], "support_y": [[0.3], [0.9]], "query_x": [[0.0]]},
     "params": {"steps": 5}}

and gets the query predictions back: regression values, or class scores (logits) for
classification. Meta-RL: ``{"inputs": {"observation": [[...]]}}`` gets the meta-policy's
deterministic actions (a first step: RL²'s hidden state and PEARL's z at their prior).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from mlflow.types.schema import ParamSchema, ParamSpec

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config, from_dict

WEIGHTS = "weights"  # artifact keys: the meta-parameters (a tensor file) and the config (YAML)
CONFIG = "config"
MAX_STEPS = 10_000  # a request may ask for more inner steps than training used, not without bound


def problem(config: Config) -> str:
    return registry.task(config.task.name).problem


def build(config: Config, meta_params: torch.Tensor) -> tuple[Any, Any]:
    """(model, policy): the exported supervised model, or the meta-RL policy (the other is None)."""
    if problem(config) == "rl":
        from metaorch.orchestrator.components import build_env_family, build_policy

        return None, build_policy(config, build_env_family(config))
    from metaorch.orchestrator.components import build_components

    _, learner = build_components(config)
    return learner.export(meta_params), None


# Creating a PythonModel subclass, MLflow asks for type hints on ``predict``'s input (here the
# signature is the schema: see ``predict``), in a warning its own filter shows whatever the
# caller's filters say. It would be a line in every run's output: left out of the display here.
_show = warnings.showwarning


def _show_but_type_hint_request(message, *args, **kwargs) -> None:
    if "Add type hints to the `predict` method" not in str(message):
        _show(message, *args, **kwargs)


warnings.showwarning = _show_but_type_hint_request


class MetaorchModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc.load_model(uri).unwrap_python_model()`` is this: ``.model`` is the
    supervised :class:`MetaModel` / :class:`EpisodicModel`, ``.policy`` and ``.params`` the
    meta-RL policy and its flat parameters, ``.config`` the run's configuration."""

    def load_context(self, context: Any) -> None:
        config = from_dict(yaml.safe_load(Path(context.artifacts[CONFIG]).read_text()), "in the model's config.yaml")
        self.setup(config, torch.load(context.artifacts[WEIGHTS], weights_only=True))

    def setup(self, config: Config, meta_params: torch.Tensor) -> None:
        self.config, self.params = config, meta_params
        self.model, self.policy = build(config, meta_params)

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        """``model_input``: the signature's named tensors (a dict of arrays). Not annotated: MLflow reads
        a type hint on it as a schema of its own (and warns that it is not one); the signature is the schema."""
        if not isinstance(model_input, dict):
            _bad(f"expected named inputs ({', '.join(input_names(self.config))}), got {type(model_input).__name__}")
        if self.policy is not None:
            return self._act(_tensor(model_input, "observation"))
        sx, sy, qx = (_tensor(model_input, k) for k in ("support_x", "support_y", "query_x"))
        if sx.shape[0] == 0 or sx.shape[0] != sy.shape[0]:
            _bad(f"support_x has {sx.shape[0]} rows and support_y {sy.shape[0]}: expected the same number, at least 1")
        if problem(self.config) == "classification":
            sy = sy.long()
            ways = self.config.task.ways
            if not registry.method(self.config.algorithm.name).any_ways and (sy.min() < 0 or sy.max() >= ways):
                _bad(f"support_y holds labels {sorted(set(sy.tolist()))}; this model is {ways}-way: labels 0..{ways - 1}")
        if not hasattr(self.model, "adapt"):  # metric and sequence methods: no inner loop
            with torch.no_grad():
                return self.model(sx, sy, qx).numpy()
        steps = (params or {}).get("steps", self.model.inner_steps)
        if not 0 <= int(steps) <= MAX_STEPS:
            _bad(f"params.steps={steps}: expected 0..{MAX_STEPS} inner steps")
        adapted = self.model.adapt(sx, sy, int(steps))
        with torch.no_grad():
            return adapted(qx).numpy()

    def _act(self, obs: torch.Tensor) -> np.ndarray:
        params = self.params
        if hasattr(self.policy, "split"):  # PEARL: the actor with z at the prior's mean
            actor, _ = self.policy.split(params)
            params = self.policy.with_latent(actor, torch.zeros(self.policy.config.latent_dim))
        with torch.no_grad():
            actions, _, _ = self.policy.act(params, obs, None, deterministic=True)
        return actions.numpy()


warnings.showwarning = _show


def _bad(message: str) -> None:
    """A request the model cannot answer: HTTP 400 with this one line (no stack trace)."""
    raise MlflowException.invalid_parameter_value(message)


def _tensor(inputs: dict[str, np.ndarray], name: str) -> torch.Tensor:
    if name not in inputs:
        _bad(f"the request has no input {name!r} (it has {', '.join(map(repr, inputs)) or 'none'})")
    return torch.as_tensor(np.ascontiguousarray(inputs[name]))


def input_names(config: Config) -> tuple[str, ...]:
    return ("observation",) if problem(config) == "rl" else ("support_x", "support_y", "query_x")


def signature(config: Config, example: dict[str, np.ndarray], output: np.ndarray) -> ModelSignature:
    """The request schema a curl user writes: named tensors, any number of rows (-1), each row
    shaped as in training; ``steps`` (inner steps) as an optional parameter of adapting methods."""

    def spec(name: str, value: np.ndarray) -> TensorSpec:
        return TensorSpec(value.dtype, (-1, *value.shape[1:]), name)

    inputs = Schema([spec(k, v) for k, v in example.items()])
    outputs = Schema([TensorSpec(output.dtype, (-1, *output.shape[1:]))])
    adapts = problem(config) != "rl" and registry.method(config.algorithm.name).adapts
    steps = ParamSchema([ParamSpec("steps", "long", config.algorithm.inner_steps)]) if adapts else None
    return ModelSignature(inputs, outputs, steps)


def example_input(config: Config) -> dict[str, np.ndarray]:
    """One small request: a test episode's support set and a few of its queries (supervised),
    or a zero observation (meta-RL)."""
    if problem(config) == "rl":
        from metaorch.orchestrator.components import build_env_family

        shape = build_env_family(config).observation_space.shape
        return {"observation": np.zeros((1, int(np.prod(shape))), np.float32)}
    from metaorch.orchestrator.components import build_family
    from metaorch.tasks.base import descriptors

    episode = build_family(config).batch(descriptors(config.seed, "test", 0, 1))
    return {k: episode[k][0][: 2 if k == "query_x" else None].numpy() for k in ("support_x", "support_y", "query_x")}
