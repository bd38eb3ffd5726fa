"""Matching Networks: a query's label distribution is an attention-weighted vote of the support labels.

Logits are the log of that distribution, computed as a per-class ``logsumexp`` of the
log-attention, so cross-entropy applies as-is and no probability needs clamping.

With full context embeddings (the paper's appendix) the support embeddings are read by a
bidirectional LSTM over the support set and each query by an attention LSTM over them. Both
LSTMs live in the same ``nn.Module`` as the Conv-4 encoder, so the whole network is still
one flat parameter vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from metaorch.algorithms.base import Vectorize
from metaorch.algorithms.conv4 import Conv4
from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.models import FunctionalModel
from metaorch.algorithms.protonet import class_one_hot


class SupportContext(nn.Module):
    """g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i: a bidirectional LSTM over the support set.

    The support set is a sequence here, so its order matters (as in the paper).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.forward_cell = nn.LSTMCell(dim, dim)
        self.backward_cell = nn.LSTMCell(dim, dim)

    @staticmethod
    def _run(cell: nn.LSTMCell, seq: torch.Tensor) -> torch.Tensor:
        h = seq.new_zeros(1, cell.hidden_size)
        c = seq.new_zeros(1, cell.hidden_size)
        out = []
        for x in seq:
            h, c = cell(x.unsqueeze(0), (h, c))
            out.append(h)
        return torch.cat(out)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return g + self._run(self.forward_cell, g) + self._run(self.backward_cell, g.flip(0)).flip(0)


class QueryContext(nn.Module):
    """f(x, S) = h_K of an attention LSTM that reads the support embeddings for K steps.

    The paper feeds the read-out r_{k-1} as part of the LSTM state [h_{k-1}, r_{k-1}]; an
    LSTM's gates are affine in cat(input, state), so feeding r with the input instead is
    the same model and keeps the state the size of the embedding. h_0 = f'(x), c_0 = 0.
    Each query row is processed independently of the other queries.
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)
        self.steps = steps

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h, c = f, torch.zeros_like(f)
        for _ in range(self.steps):
            readout = torch.softmax(h @ g.T, dim=1) @ g
            h_hat, c = self.cell(torch.cat([f, readout], 1), (h, c))
            h = h_hat + f
        return h


class MatchingNetwork(nn.Module):
    """The Conv-4 ``encoder``, plus ``fce_g`` and ``fce_f`` when using full context embeddings."""

    def __init__(self, fce: bool = False, fce_steps: int = 5, in_channels: int = 1, filters: int = 64):
        super().__init__()
        self.encoder = Conv4(in_channels, filters)
        self.fce = fce
        if fce:
            dim = self.encoder.out_features
            self.fce_g = SupportContext(dim)
            self.fce_f = QueryContext(dim, fce_steps)

    def forward(self, x: torch.Tensor, stats_rows: int | None = None) -> torch.Tensor:
        return self.encoder(x, stats_rows)


def attention_logits(
    support_z: torch.Tensor, support_y: torch.Tensor, query_z: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """[Q, N] log of sum_i a(q, x_i) y_i, with a = softmax over the support of scale * cosine."""
    cosine = F.normalize(query_z, dim=1) @ F.normalize(support_z, dim=1).T
    log_attention = torch.log_softmax(scale * cosine, dim=1)
    log_mask = class_one_hot(support_y).log()  # 0 on the class's support rows, -inf elsewhere
    return torch.logsumexp(log_attention.unsqueeze(2) + log_mask.unsqueeze(0), dim=1)


def matching_model(fce: bool = False, fce_steps: int = 5, filters: int = 64) -> FunctionalModel:
    return FunctionalModel(MatchingNetwork(fce, fce_steps, filters=filters))


class MatchingNetworks(EpisodicLearner):
    """Matching Networks (Vinyals et al. 2016): softmax over cosine similarities, fixed ``scale`` (1 = the paper); optional FCE."""

    def __init__(
        self,
        model: FunctionalModel | None = None,
        scale: float = 1.0,
        transductive: bool = True,
        vectorize: Vectorize = "loop",
    ):
        model = model if model is not None else matching_model()
        if not isinstance(model.module, MatchingNetwork):
            raise TypeError("MatchingNetworks needs a FunctionalModel of a MatchingNetwork")
        super().__init__(model, transductive, vectorize)
        self.scale = scale

    @property
    def fce(self) -> bool:
        return self.model.module.fce

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        support_z, query_z = self.embed(meta_params, support_x, query_x, module="encoder")
        if self.fce:
            support_z = self.model.sub(meta_params, "fce_g", support_z)
            query_z = self.model.sub(meta_params, "fce_f", query_z, support_z)
        return attention_logits(support_z, support_y, query_z, self.scale)
