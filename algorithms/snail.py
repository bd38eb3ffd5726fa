"""SNAIL (Mishra et al. 2018), a simple neural attentive meta-learner, for few-shot classification.

An episode is a sequence: the N*K labelled support embeddings (image embedding
concatenated with the one-hot label), then one query with a zero label. Causal temporal
convolutions aggregate nearby steps, causal soft attention pinpoints single earlier ones,
and the output at the query's position is its prediction. Each query is its own sequence
sharing the support prefix, so queries never see each other; all of them are evaluated in
one pass that computes the shared prefix once (:class:`Steps`).

The Omniglot architecture of the paper's appendix: AttentionBlock(64, 32), TCBlock(T, 128),
AttentionBlock(256, 128), TCBlock(T, 128), AttentionBlock(512, 256), then a 1x1 convolution
to N logits. One deliberate difference: the TCBlock's dense blocks use dilations
1, 2, 4, ... rather than the paper's 2, 4, 8, ...; with kernel size 2 the paper's stack
never reaches an odd offset, while this one covers every earlier step within 2^ceil(log2 T).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from metaorch.algorithms.base import Vectorize
from metaorch.algorithms.conv4 import Conv4
from metaorch.algorithms.episodic import EpisodicLearner
from metaorch.algorithms.models import FunctionalModel


class Steps(NamedTuple):
    """Which rows of a sequence see which: rows before ``prefix`` form one causal sequence
    (row i at time i); each later row is a separate continuation of that prefix at time
    ``prefix``, seeing the prefix and itself only. With ``prefix = T`` it is a plain causal
    sequence; with ``prefix = N*K`` the rows after it are an episode's queries, evaluated
    in one pass of N*K + NQ rows instead of NQ sequences of N*K + 1."""

    time: torch.Tensor  # [T]
    prefix: int

    @classmethod
    def of(cls, rows: int, prefix: int | None, device: torch.device) -> Steps:
        prefix = rows if prefix is None else prefix
        return cls(torch.arange(rows, device=device).clamp(max=prefix), prefix)

    def delayed(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """x [B, T, C] as seen ``d`` steps back (zeros before the start); always a prefix row."""
        src = self.time - d
        return x.index_select(1, src.clamp(min=0)) * (src >= 0).to(x.dtype).unsqueeze(-1)

    def visible(self) -> torch.Tensor:
        """[T, T] bool: may row i attend to row j."""
        rows = torch.arange(self.time.shape[0], device=self.time.device)
        earlier = (rows < self.prefix)[None, :] & (self.time[None, :] <= self.time[:, None])
        return earlier | (rows[:, None] == rows[None, :])


class DenseBlock(nn.Module):
    """A causal convolution of kernel 2 and dilation ``d`` (a linear map of [x_{t-d}, x_t]),
    gated tanh * sigmoid, its ``filters`` outputs concatenated to the input."""

    def __init__(self, channels: int, dilation: int, filters: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Linear(2 * channels, 2 * filters)

    def forward(self, x: torch.Tensor, steps: Steps) -> torch.Tensor:
        xf, xg = self.conv(torch.cat([steps.delayed(x, self.dilation), x], -1)).chunk(2, -1)
        return torch.cat([x, torch.tanh(xf) * torch.sigmoid(xg)], -1)


class TCBlock(nn.ModuleList):
    """ceil(log2 T) dense blocks with doubling dilations: a receptive field of the whole sequence."""

    def __init__(self, channels: int, seq_len: int, filters: int):
        blocks = []
        for i in range(max(1, math.ceil(math.log2(seq_len)))):
            blocks.append(DenseBlock(channels, 2**i, filters))
            channels += filters
        super().__init__(blocks)
        self.out_channels = channels

    def forward(self, x: torch.Tensor, steps: Steps) -> torch.Tensor:
        for block in self:
            x = block(x, steps)
        return x


class AttentionBlock(nn.Module):
    """Single-head causally masked softmax attention; the read is concatenated to the input."""

    def __init__(self, channels: int, key_size: int, value_size: int):
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale = 1 / math.sqrt(key_size)
        self.out_channels = channels + value_size

    def forward(self, x: torch.Tensor, steps: Steps) -> torch.Tensor:
        logits = self.query(x) @ self.key(x).transpose(-1, -2) * self.scale  # [B, T, T]
        probs = torch.softmax(logits.masked_fill(~steps.visible(), float("-inf")), -1)
        return torch.cat([x, probs @ self.value(x)], -1)


# The paper's Omniglot network: (attention, key size, value size) and (tc, filters).
OMNIGLOT_BLOCKS = (("attention", 64, 32), ("tc", 128), ("attention", 256, 128), ("tc", 128), ("attention", 512, 256))


class SNAILCore(nn.Module):
    """[B, T, input_size] -> logits [B, T, ways] at every position; see :class:`Steps` for ``prefix``."""

    def __init__(self, input_size: int, ways: int, seq_len: int, scale: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = input_size
        for kind, *sizes in OMNIGLOT_BLOCKS:
            sizes = [max(1, round(n * scale)) for n in sizes]
            layer = AttentionBlock(c, *sizes) if kind == "attention" else TCBlock(c, seq_len, *sizes)
            layers.append(layer)
            c = layer.out_channels
        self.blocks = nn.ModuleList(layers)
        self.output = nn.Linear(c, ways)

    def forward(self, x: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
        steps = Steps.of(x.shape[1], prefix, x.device)
        for block in self.blocks:
            x = block(x, steps)
        return self.output(x)


class SNAILNetwork(nn.Module):
    """Conv-4 ``encoder`` and the ``core``; ``forward`` classifies sequences of images with
    their (one-hot, zero where unknown) labels."""

    def __init__(self, ways: int, shots: int, filters: int = 64, scale: float = 1.0):
        super().__init__()
        self.encoder = Conv4(filters=filters)
        self.core = SNAILCore(self.encoder.out_features + ways, ways, ways * shots + 1, scale)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B, T, 1, 28, 28], labels [B, T, N] -> logits [B, T, N]; batch-norm statistics
        over all B * T images."""
        z = self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.core(torch.cat([z, labels], -1))


class SNAIL(EpisodicLearner):
    """SNAIL for ``ways``-way episodes. ``shots`` is the training shot count: it sets the
    TCBlocks' depth (ceil(log2 T) for T = ways * shots + 1), as the paper trains one network
    per setting; other shot counts still run, the attention seeing the whole support set.
    ``filters`` is the Conv-4 width, ``scale`` multiplies every block's size (1: the paper's
    network; smaller for quick tests)."""

    def __init__(
        self,
        ways: int,
        shots: int = 1,
        filters: int = 64,
        scale: float = 1.0,
        transductive: bool = True,
        vectorize: Vectorize = "loop",
    ):
        super().__init__(FunctionalModel(SNAILNetwork(ways, shots, filters, scale)), transductive, vectorize)
        self.ways = ways

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        zs, zq = self.embed(meta_params, support_x, query_x, module="encoder")
        labels = (support_y.unsqueeze(-1) == torch.arange(self.ways, device=support_y.device)).to(zs.dtype)
        support = torch.cat([zs, labels], -1)  # [NK, d]
        query = torch.cat([zq, zq.new_zeros(zq.shape[0], self.ways)], -1)  # [NQ, d]
        # one pass: the support prefix once, then every query as its own last step
        return self.model.sub(meta_params, "core", torch.cat([support, query])[None], prefix=support.shape[0])[0, support.shape[0] :]
