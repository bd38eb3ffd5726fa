"""The central learner: owns the meta-parameters and the outer optimizer.

The outer step consumes an already-reduced direction, so the same code serves gradients
(MAML, FOMAML, Meta-SGD) and Reptile's ``theta - phi``. The learning rate is a pure
function of the iteration (Reptile's linear annealing of epsilon), so resuming needs no
scheduler state.

Where it runs: in the driver, on the driver's GPU when it sees one; or, when the driver's
node has no GPU and another node has (``learner.placement``, :func:`orchestrator.session.learner_in_actor`),
in a :class:`RemoteLearner` actor that Ray places on a GPU node. Both answer the same calls
with CPU copies, so the loop, checkpoints and tracking never see a device. (On a GPU the
Adam step is not bitwise the CPU one; every run on the same kind of device is.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metaorch.orchestrator.config import OuterConfig


def _cpu(value: Any) -> Any:
    """Optimizer state with every tensor on the CPU, so a checkpoint loads anywhere."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    return value


class Learner:
    def __init__(self, meta_params: torch.Tensor, outer: OuterConfig, device: str | None = None):
        self.outer = outer
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.params = torch.nn.Parameter(meta_params.detach().clone().float().to(self.device))
        if outer.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.params], lr=outer.lr)
        else:
            self.optimizer = torch.optim.SGD([self.params], lr=outer.lr)

    def lr_at(self, iteration: int) -> float:
        if self.outer.final_lr is None:
            return self.outer.lr
        frac = iteration / self.outer.iterations
        return (1 - frac) * self.outer.lr + frac * self.outer.final_lr

    def snapshot(self) -> np.ndarray:
        """A copy of the parameters for the object store."""
        return self.params.detach().cpu().numpy().copy()

    def cpu_params(self) -> torch.Tensor:
        """The parameters as a CPU tensor that later steps do not change."""
        return self.params.detach().cpu().clone()

    def step(self, direction: torch.Tensor, iteration: int) -> float:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.params.grad = direction.to(self.params.device, self.params.dtype)
        self.optimizer.step()
        self.params.grad = None
        return lr

    def state_dict(self) -> dict[str, Any]:
        return _cpu(self.optimizer.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)  # moves the state to the parameters' device

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device), "gpu_ids": ray.get_gpu_ids()}

    def close(self) -> None:
        pass


class RemoteLearner:
    """A :class:`Learner` in a Ray actor that asks for ``num_gpus``: the same calls, one round trip each."""

    def __init__(self, meta_params: torch.Tensor, outer: OuterConfig, num_gpus: float):
        import ray

        self._ray = ray
        self.actor = ray.remote(num_cpus=0, num_gpus=num_gpus)(Learner).remote(meta_params, outer)
        self.outer = outer

    def _call(self, method: str, *args: Any) -> Any:
        return self._ray.get(getattr(self.actor, method).remote(*args))

    def snapshot(self) -> np.ndarray:
        return self._call("snapshot")

    def cpu_params(self) -> torch.Tensor:
        return self._call("cpu_params")

    def step(self, direction: torch.Tensor, iteration: int) -> float:
        return self._call("step", direction, iteration)

    def state_dict(self) -> dict[str, Any]:
        return self._call("state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)

    def where(self) -> dict[str, Any]:
        return self._call("where")

    def close(self) -> None:
        self._ray.kill(self.actor)
