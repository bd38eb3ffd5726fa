"""Methods without an inner loop: metric (Prototypical, Matching, Siamese) and sequence
(MANN, SNAIL) learners.

An episode's loss is a differentiable function of the meta-parameters, so the outer
direction a worker returns is simply its gradient, summed over the chunk's episodes:
the same contract as MAML's, and the learner cannot tell the difference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad_and_value
from torch.nn import functional as F

from metaorch.algorithms.base import OuterUpdate, Vectorize, accuracy, map_tasks
from metaorch.algorithms.models import FunctionalModel
from metaorch.tasks.base import TaskBatch

Metrics = dict[str, torch.Tensor]


class EpisodicLearner:
    """Subclasses define ``query_logits``; some (Siamese, MANN) also their own ``episode_loss``."""

    def __init__(self, model: FunctionalModel, transductive: bool = True, vectorize: Vectorize = "loop"):
        self.model = model
        self.transductive = transductive
        self.vectorize = vectorize

    def init_meta_params(self, seed: int) -> torch.Tensor:
        return self.model.init_params(seed)

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def embed(
        self, meta_params: torch.Tensor, support_x: torch.Tensor, query_x: torch.Tensor, module: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query embeddings from one pass of the backbone (``module``, or the
        whole model); batch-norm statistics come from the support rows unless transductive."""
        n = support_x.shape[0]
        x = torch.cat([support_x, query_x])
        stats_rows = None if self.transductive else n
        if module is None:
            z = self.model(meta_params, x, stats_rows=stats_rows)
        else:
            z = self.model.sub(meta_params, module, x, stats_rows=stats_rows)
        return z[:n], z[n:]

    def episode_loss(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, Metrics]:
        logits = self.query_logits(meta_params, task["support_x"], task["support_y"], task["query_x"])
        return F.cross_entropy(logits, task["query_y"]), {"accuracy": accuracy(logits, task["query_y"])}

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        per_episode = grad_and_value(self.episode_loss, has_aux=True)
        grads, (loss, metrics) = map_tasks(per_episode, meta_params, batch, self.vectorize)
        loss = loss.detach()
        return OuterUpdate(grads.sum(0), pre_loss=loss, post_loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

    def export(self, meta_params: torch.Tensor) -> nn.Module:
        return EpisodicModel(self, meta_params)


class EpisodicModel(nn.Module):
    """The trained learner as an ``nn.Module``: ``model(support_x, support_y, query_x)`` gives
    query logits for one episode. This is what is logged to MLflow."""

    def __init__(self, learner: EpisodicLearner, meta_params: torch.Tensor):
        super().__init__()
        self.learner = learner
        self.meta_params = nn.Parameter(meta_params.detach().clone(), requires_grad=False)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        return self.learner.query_logits(self.meta_params, support_x, support_y, query_x)
