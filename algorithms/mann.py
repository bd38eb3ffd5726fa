"""Memory-augmented neural network (Santoro et al. 2016) for few-shot classification.

An LSTM controller reads an episode one example at a time and is told each example's
label one step late, so it can only be right about a class it has seen before by storing
(image, label) bindings in an external memory and reading them back. Reads use cosine
content addressing; writes use least-recently-used access (LRUA): a learned gate chooses
between the slots just read (update a binding) and the least-used slots (store a new one).

Differences from the paper, each for a reason:

* images go through the Conv-4 encoder instead of being fed as 20x20 raw pixels, so MANN
  sees the same features and batch-norm switch (``transductive``) as the other methods;
* the embedding is layer-normalised before the controller: Conv-4 features are
  non-negative (ReLU, max-pool), so all embeddings point roughly the same way and cosine
  keys cannot tell classes apart; in our synthetic checks, bindings formed after ~150
  meta-steps with the normalisation and not within 300 without it;
* each head writes an add vector ``a_t`` (as in the NTM and public reimplementations),
  not its key ``k_t`` as the paper's equation reads: memory is read after the write, and
  a key read right after being written always finds the slot it was just written to;
* each read head may learn a key strength ``beta >= 1`` (NTM, Graves et al. 2014); the
  paper's softmax over raw cosines in [-1, 1] (``key_strength=False``) is nearly uniform
  over 128 slots.

Every function is pure and batched over independent sequences, so the queries of an
episode run as separate continuations of one shared state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from metaorch.algorithms.base import OuterUpdate, Vectorize, accuracy
from metaorch.algorithms.conv4 import Conv4
from metaorch.algorithms.episodic import EpisodicLearner, Metrics
from metaorch.algorithms.models import FunctionalModel
from metaorch.tasks.base import TaskBatch

INSTANCES = (1, 2, 3, 5, 10)  # the occurrences of a class at which accuracy is reported
MEMORY_INIT = 1e-6  # a constant, non-zero memory so the first cosines are defined


class MemoryState(NamedTuple):
    """Everything a step needs from the previous one; row b is sequence b."""

    h: torch.Tensor  # [B, hidden] controller output
    c: torch.Tensor  # [B, hidden] controller cell
    reads: torch.Tensor  # [B, R, W] read vectors r_{t-1}, fed back to the controller
    memory: torch.Tensor  # [B, S, W]
    read_weights: torch.Tensor  # [B, R, S] w^r_{t-1}
    usage: torch.Tensor  # [B, S] w^u_{t-1}


def one_hot(y: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``F.one_hot`` as a comparison, which ``vmap`` can batch."""
    return (y.unsqueeze(-1) == torch.arange(n, device=y.device)).to(dtype)


def least_used(usage: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w^lu`` (1 at the ``n`` least-used slots, else 0) and the single least-used slot.

    Ties go to the lower index (stable sort): at the start, when all usage is zero, the
    first writes fill slots 0, 1, ... in order, deterministically.
    """
    order = torch.argsort(usage, dim=-1, stable=True)[..., :n]  # [B, n]
    hits = torch.arange(usage.shape[-1], device=usage.device) == order.unsqueeze(-1)  # [B, n, S]
    return hits.any(-2).to(usage.dtype), hits[..., 0, :].to(usage.dtype)


def lrua_write_weights(gate: torch.Tensor, prev_read_weights: torch.Tensor, prev_usage: torch.Tensor) -> torch.Tensor:
    """``w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}``, per head.

    gate [B, R, 1] (the logit alpha), prev_read_weights [B, R, S], prev_usage [B, S];
    ``w^lu`` marks as many least-used slots as there are read heads, as in the paper.
    """
    lu, _ = least_used(prev_usage, prev_read_weights.shape[-2])
    g = torch.sigmoid(gate)
    return g * prev_read_weights + (1 - g) * lu.unsqueeze(-2)


def update_usage(usage: torch.Tensor, read_weights: torch.Tensor, write_weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``, summed over heads."""
    return gamma * usage + read_weights.sum(-2) + write_weights.sum(-2)


def cosine_weights(keys: torch.Tensor, memory: torch.Tensor, strength: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over slots of the cosine between each key [B, R, W] and each row of memory [B, S, W].

    Normalising with ``rsqrt(|x|^2 + eps)`` keeps the gradient finite at the zeroed slot.
    """
    k = keys * torch.rsqrt((keys * keys).sum(-1, keepdim=True) + 1e-8)
    m = memory * torch.rsqrt((memory * memory).sum(-1, keepdim=True) + 1e-8)
    sim = k @ m.transpose(-1, -2)  # [B, R, S]
    return torch.softmax(sim if strength is None else strength * sim, dim=-1)


def lstm_cell(cell: nn.LSTMCell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.LSTMCell``'s step in explicit ops: its fused kernel has no ``vmap`` batching rule."""
    gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class MANNCore(nn.Module):
    """Controller and memory: (inputs [B, T, D], previous labels [B, T, N]) -> logits [B, T, N]."""

    def __init__(
        self,
        input_size: int,
        ways: int,
        hidden: int = 200,
        slots: int = 128,
        width: int = 40,
        reads: int = 4,
        gamma: float = 0.95,
        key_strength: bool = True,
    ):
        super().__init__()
        self.hidden, self.slots, self.width, self.reads, self.gamma = hidden, slots, width, reads, gamma
        self.key_strength = key_strength
        self.input_norm = nn.LayerNorm(input_size)
        self.controller = nn.LSTMCell(input_size + ways + reads * width, hidden)
        # per head: key (W), add vector (W), write gate alpha (1), optionally key strength (1)
        self.interface = nn.Linear(hidden, reads * (2 * width + 1 + int(key_strength)))
        self.output = nn.Linear(hidden + reads * width, ways)

    def initial_state(self, batch: int, like: torch.Tensor) -> MemoryState:
        z = like.new_zeros
        return MemoryState(
            h=z(batch, self.hidden),
            c=z(batch, self.hidden),
            reads=z(batch, self.reads, self.width),
            memory=like.new_full((batch, self.slots, self.width), MEMORY_INIT),
            read_weights=z(batch, self.reads, self.slots),
            usage=z(batch, self.slots),
        )

    def step(self, x: torch.Tensor, y_prev: torch.Tensor, s: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        b, w = x.shape[0], self.width
        x = self.input_norm(x)
        h, c = lstm_cell(self.controller, torch.cat([x, y_prev, s.reads.flatten(1)], -1), s.h, s.c)
        iface = self.interface(h).view(b, self.reads, -1)
        keys, adds = torch.tanh(iface[..., :w]), torch.tanh(iface[..., w : 2 * w])
        gate = iface[..., 2 * w : 2 * w + 1]
        strength = 1 + F.softplus(iface[..., 2 * w + 1 :]) if self.key_strength else None
        # write: zero the least-used slot, then add each head's vector at its LRUA weights
        write_weights = lrua_write_weights(gate, s.read_weights, s.usage)
        _, lu_slot = least_used(s.usage, 1)
        memory = s.memory * (1 - lu_slot).unsqueeze(-1) + write_weights.transpose(-1, -2) @ adds
        # read from the updated memory
        read_weights = cosine_weights(keys, memory, strength)
        reads = read_weights @ memory
        usage = update_usage(s.usage, read_weights, write_weights, self.gamma)
        logits = self.output(torch.cat([h, reads.flatten(1)], -1))
        return logits, MemoryState(h, c, reads, memory, read_weights, usage)

    def forward(
        self, x: torch.Tensor, y_prev: torch.Tensor, state: MemoryState | None = None
    ) -> tuple[torch.Tensor, MemoryState]:
        s = self.initial_state(x.shape[0], x) if state is None else state
        out = []
        for t in range(x.shape[1]):
            logits, s = self.step(x[:, t], y_prev[:, t], s)
            out.append(logits)
        return torch.stack(out, 1), s


class MANNNetwork(nn.Module):
    """Conv-4 ``encoder`` and the ``core``; ``forward`` runs whole sequences of images."""

    def __init__(self, ways: int, filters: int = 64, **core: object):
        super().__init__()
        self.encoder = Conv4(filters=filters)
        self.core = MANNCore(self.encoder.out_features, ways, **core)

    def forward(self, x: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        """x [B, T, 1, 28, 28], y_prev [B, T, N] -> logits [B, T, N]; batch-norm statistics
        over all B * T images."""
        z = self.encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.core(z, y_prev)[0]


def shifted_labels(y: torch.Tensor, ways: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot label of step t-1 at step t, zeros at t=0: labels arrive one step late.
    y [..., T] -> [..., T, ways]."""
    y1 = one_hot(y, ways, dtype)
    return torch.cat([torch.zeros_like(y1[..., :1, :]), y1[..., :-1, :]], -2)


class MANN(EpisodicLearner):
    """Santoro et al.'s MANN; defaults are the paper's Omniglot setting (200 LSTM units,
    128 x 40 memory, 4 read heads) on a Conv-4 with ``filters`` channels (64-d embedding).

    The core is stepped once per time step for a whole batch of sequences, so a chunk's
    episodes share every step (``outer_update`` with ``vectorize="loop"``): the step is ~30
    small ops, and one sequence per call would spend most of its time dispatching them.
    Functions below take episodes stacked on a leading dim E.
    """

    def __init__(
        self,
        ways: int,
        filters: int = 64,
        hidden: int = 200,
        slots: int = 128,
        width: int = 40,
        reads: int = 4,
        gamma: float = 0.95,
        key_strength: bool = True,
        transductive: bool = True,
        vectorize: Vectorize = "loop",
    ):
        net = MANNNetwork(ways, filters, hidden=hidden, slots=slots, width=width, reads=reads, gamma=gamma, key_strength=key_strength)
        super().__init__(FunctionalModel(net), transductive, vectorize)
        self.ways = ways

    def _core(self, meta_params: torch.Tensor, z: torch.Tensor, y_prev: torch.Tensor, state: MemoryState | None = None):
        return self.model.sub(meta_params, "core", z, y_prev, state)

    def _query_logits(self, meta_params: torch.Tensor, zs: torch.Tensor, support_y: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """zs [E, S, D], support_y [E, S], zq [E, Q, D] -> [E, Q, N]: each support sequence
        once, then one step per query from a copy of its final state, so no query sees another."""
        _, state = self._core(meta_params, zs, shifted_labels(support_y, self.ways, zs.dtype))
        e, nq = zq.shape[:2]
        state = MemoryState(*(s[:, None].expand(e, nq, *s.shape[1:]).flatten(0, 1) for s in state))
        last = one_hot(support_y[:, -1], self.ways, zq.dtype)[:, None].expand(e, nq, self.ways).flatten(0, 1)
        logits, _ = self._core(meta_params, zq.flatten(0, 1)[:, None], last[:, None], state)
        return logits[:, 0].unflatten(0, (e, nq))

    def query_logits(
        self,
        meta_params: torch.Tensor,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        zs, zq = self.embed(meta_params, support_x, query_x, module="encoder")
        return self._query_logits(meta_params, zs[None], support_y[None], zq[None])[0]

    def sequence_logits(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [T, N] and labels [T] of the training sequence: support and queries
        interleaved by ``task["order"]``, each label given one step late."""
        zs, zq = self.embed(meta_params, task["support_x"], task["query_x"], module="encoder")
        logits, y = self._sequence_logits(meta_params, zs[None], zq[None], {k: v[None] for k, v in task.items()})
        return logits[0], y[0]

    def _sequence_logits(
        self, meta_params: torch.Tensor, zs: torch.Tensor, zq: torch.Tensor, tasks: TaskBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        order = tasks["order"]
        z = torch.cat([zs, zq], 1).gather(1, order[..., None].expand(*order.shape, zs.shape[-1]))
        y = torch.cat([tasks["support_y"], tasks["query_y"]], 1).gather(1, order)
        logits, _ = self._core(meta_params, z, shifted_labels(y, self.ways, z.dtype))
        return logits, y

    def _episodes_loss(
        self, meta_params: torch.Tensor, zs: torch.Tensor, zq: torch.Tensor, tasks: TaskBatch
    ) -> tuple[torch.Tensor, Metrics]:
        """Per episode [E]: cross-entropy over every step of its sequence, and the metrics.

        ``accuracy`` is ``query_logits``' accuracy, comparable with other methods;
        ``acc_instance_i`` is the accuracy at the i-th occurrence of a class in the sequence,
        for the i in INSTANCES that every class reaches if episodes are balanced
        (i <= T / ways), so the keys depend only on the configuration. In an unbalanced
        episode an instance is averaged over the classes that reach it (0 if none does).
        """
        logits, y = self._sequence_logits(meta_params, zs, zq, tasks)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(-1)
        with torch.no_grad():  # metrics only: torch.func.grad respects an inner no_grad
            correct = (logits.argmax(-1) == y).to(logits.dtype)
            y1 = one_hot(y, self.ways, logits.dtype)
            instance = (y1.cumsum(-2) * y1).sum(-1)  # occurrence number of y_t so far
            metrics = {}
            for i in INSTANCES:
                if i <= y.shape[-1] // self.ways:
                    at = (instance == i).to(logits.dtype)
                    metrics[f"acc_instance_{i}"] = (correct * at).sum(-1) / at.sum(-1).clamp(min=1)
            query = self._query_logits(meta_params, zs, tasks["support_y"], zq)
            metrics["accuracy"] = accuracy(query, tasks["query_y"])
        return loss, metrics

    def episode_loss(self, meta_params: torch.Tensor, task: TaskBatch) -> tuple[torch.Tensor, Metrics]:
        zs, zq = self.embed(meta_params, task["support_x"], task["query_x"], module="encoder")
        loss, metrics = self._episodes_loss(meta_params, zs[None], zq[None], {k: v[None] for k, v in task.items()})
        return loss[0], {k: v[0] for k, v in metrics.items()}

    def outer_update(self, meta_params: torch.Tensor, batch: TaskBatch) -> OuterUpdate:
        """``vectorize="loop"``: each episode's images through the encoder on their own (their
        own batch-norm statistics), then all the chunk's sequences through the core together,
        in one autograd graph."""
        if self.vectorize == "vmap":
            return super().outer_update(meta_params, batch)
        leaf = meta_params.detach().requires_grad_(True)
        with torch.enable_grad():
            embedded = [self.embed(leaf, sx, qx, module="encoder") for sx, qx in zip(batch["support_x"], batch["query_x"])]
            zs, zq = (torch.stack(z) for z in zip(*embedded))
            loss, metrics = self._episodes_loss(leaf, zs, zq, batch)
            (direction,) = torch.autograd.grad(loss.sum(), leaf)
        loss = loss.detach()
        return OuterUpdate(direction, pre_loss=loss, post_loss=loss, metrics=metrics)
