"""Prototypical Networks: classify a query by its distance to each class's mean embedding.

Class means come from a one-hot matmul rather than a loop over classes, so the number of
ways is whatever the episode brings: a net trained 5-way is tested 20-way unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from metaorch.algorithms.base import Vectorize
from metaorch.algorithms.conv4 import Conv4
from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.models import FunctionalModel


def class_one_hot(support_y: torch.Tensor) -> torch.Tensor:
    """[S, N] float one-hot of the support labels, N = max label + 1.

    ``int()`` reads the labels, which is fine in loop mode but not under ``vmap``; episodes
    label their classes 0..N-1, so every column has at least one support row.
    """
    return F.one_hot(support_y, int(support_y.max()) + 1).to(torch.float32)


def prototypes(support_z: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """[N, D] class means of the support embeddings."""
    onehot = class_one_hot(support_y).to(support_z.dtype)
    return (onehot.T @ support_z) / onehot.sum(0).unsqueeze(1)


def prototype_logits(support_z: torch.Tensor, support_y: torch.Tensor, query_z: torch.Tensor) -> torch.Tensor:
    """[Q, N] minus the squared Euclidean distance from each query to each prototype.

    The explicit difference, not ``|a|^2 - 2ab + |b|^2``: exact for nearby points, and the
    [Q, N, D] intermediate is small at few-shot sizes.
    """
    protos = prototypes(support_z, support_y)
    return -(query_z.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def protonet_model(filters: int = 64) -> FunctionalModel:
    return FunctionalModel(Conv4(filters=filters))


class ProtoNet(EpisodicLearner):
    """Prototypical Networks (Snell et al. 2017): squared Euclidean distance to class means, Conv-4 as in the paper."""

    def __init__(
        self, model: FunctionalModel | None = None, transductive: bool = True, vectorize: Vectorize = "loop"
    ):
        super().__init__(model if model is not None else protonet_model(), transductive, vectorize)

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        support_z, query_z = self.embed(meta_params, support_x, query_x)
        return prototype_logits(support_z, support_y, query_z)
