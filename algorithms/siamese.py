"""Siamese networks: learn "same class or not" on pairs, classify by the most similar support image.

Training is verification, not classification: every pair of an episode's images (support
and query alike) is a training pair. Different-class pairs outnumber same-class ones about
N-1 to 1, so the two kinds are averaged separately and then together; every pair is used
once, in a fixed order, with no sampling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from metaorch.algorithms.base import Vectorize, accuracy
from metaorch.algorithms.conv4 import Conv4
from metaorch.algorithms.episodic import EpisodicLearner, Metrics
from metaorch.algorithms.models import FunctionalModel
from metaorch.algorithms.protonet import class_one_hot
from metaorch.tasks.base import TaskBatch


class SiameseNetwork(nn.Module):
    """Twin Conv-4 ``encoder`` and a ``head`` from the L1 distance of two embeddings to one "same" logit."""

    def __init__(self, in_channels: int = 1, filters: int = 64):
        super().__init__()
        self.encoder = Conv4(in_channels, filters)
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, x: torch.Tensor, stats_rows: int | None = None) -> torch.Tensor:
        return self.encoder(x, stats_rows)


def siamese_model(filters: int = 64) -> FunctionalModel:
    return FunctionalModel(SiameseNetwork(filters=filters))


def max_per_class(pair_logits: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """[Q, S] pair logits -> [Q, N]: each class scored by its most similar support image."""
    mask = class_one_hot(support_y).bool()  # [S, N]
    scores = pair_logits.unsqueeze(2).masked_fill(~mask.unsqueeze(0), float("-inf"))
    return scores.amax(1)


def verification_loss(pair_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced binary cross-entropy over the pairs i < j of a symmetric [M, M] logit matrix.

    Returns the loss and the balanced verification accuracy (the mean of the same-pair and
    the different-pair accuracies), both scalars.
    """
    m = y.shape[0]
    upper = torch.ones(m, m, dtype=torch.bool, device=y.device).triu(1)
    same = (y.unsqueeze(0) == y.unsqueeze(1)) & upper
    different = (y.unsqueeze(0) != y.unsqueeze(1)) & upper
    target = same.to(pair_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(pair_logits, target, reduction="none")
    correct = ((pair_logits > 0) == same).to(pair_logits.dtype)

    def balanced(values: torch.Tensor) -> torch.Tensor:
        s, d = same.to(values.dtype), different.to(values.dtype)
        return 0.5 * ((values * s).sum() / s.sum().clamp_min(1) + (values * d).sum() / d.sum().clamp_min(1))

    return balanced(bce), balanced(correct).detach()


class SiameseNetworks(EpisodicLearner):
    """Siamese networks (Koch et al. 2015) on the Conv-4 backbone instead of Koch's 105x105 net; pairs come from within episodes."""

    def __init__(
        self, model: FunctionalModel | None = None, transductive: bool = True, vectorize: Vectorize = "loop"
    ):
        model = model if model is not None else siamese_model()
        if not isinstance(model.module, SiameseNetwork):
            raise TypeError("SiameseNetworks needs a FunctionalModel of a SiameseNetwork")
        super().__init__(model, transductive, vectorize)

    def pair_logits(self, meta_params: torch.Tensor, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """[A, B] "same class" logits of every pair of rows of ``za`` and ``zb``."""
        distance = (za.unsqueeze(1) - zb.unsqueeze(0)).abs()
        return self.model.sub(meta_params, "head", distance).squeeze(-1)

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        support_z, query_z = self.embed(meta_params, support_x, query_x, module="encoder")
        return max_per_class(self.pair_logits(meta_params, query_z, support_z), support_y)

    def episode_loss(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, Metrics]:
        support_x, support_y, query_y = task["support_x"], task["support_y"], task["query_y"]
        support_z, query_z = self.embed(meta_params, support_x, task["query_x"], module="encoder")
        z = torch.cat([support_z, query_z])
        logits = self.pair_logits(meta_params, z, z)
        loss, verification = verification_loss(logits, torch.cat([support_y, query_y]))
        # The query-support block is exactly what query_logits computes: same embeddings.
        n = support_x.shape[0]
        classes = max_per_class(logits[n:, :n], support_y)
        return loss, {"accuracy": accuracy(classes, query_y), "verification_accuracy": verification}
