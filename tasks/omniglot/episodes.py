"""N-way K-shot Omniglot episodes built from task descriptors.

Like the sinusoid family, an episode is a pure function of its descriptor: its own random
stream picks the classes, drawings and orders, so any worker rebuilds it bit for bit. The
family is cheap to pickle: the arrays reach a worker separately, attached from the object
store (or, without one, mapped from the cache on the first batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metaorch.tasks.base import TaskBatch, TaskDescriptor
from metaorch.tasks.omniglot.archives import DRAWINGS
from metaorch.tasks.omniglot.data import OmniglotData, data_root, load_omniglot
from metaorch.tasks.omniglot.download import ensure_archives
from metaorch.tasks.omniglot.errors import DatasetError
from metaorch.tasks.omniglot.images import PAPER, SIZE, to_float
from metaorch.tasks.omniglot.splits import SplitSpec, split_characters

ROTATIONS = 4  # quarter turns; each rotation of a character is a class of its own (Santoro et al.)


@dataclass(frozen=True)
class Episode:
    """Indices of one episode; label i is class i, drawn as ``characters[i]`` turned (and mirrored) by ``rotations[i]``."""

    characters: np.ndarray  # int64 [N]
    rotations: np.ndarray  # int64 [N], quarter turns counter-clockwise (np.rot90); 4-7: mirrored left-right first
    drawings: np.ndarray  # int64 [N, K+Q]: the first K of each row are support, the rest query
    support_order: np.ndarray  # int64 [N*K]: position p of the support holds class-major item support_order[p]
    query_order: np.ndarray  # int64 [N*Q], likewise
    order: np.ndarray  # int64 [N*(K+Q)]: a permutation for sequence models over concat(support, query)
    shifts: np.ndarray  # int64 [N, K+Q, 2]: (down, right) translation of each drawing, 0 without augmentation


class OmniglotTasks:
    input_shape = (1, SIZE, SIZE)
    input_dim = SIZE * SIZE  # the TaskFamily protocol's flat size, for models that flatten
    loss = "cross_entropy"

    def __init__(
        self,
        root: str | Path | None = None,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        rotations: bool = True,
        split: SplitSpec = "auto",
        cache_dir: str | Path | None = None,
        shift: int = 0,
        mirror: bool = False,
        download: bool = False,
        url: str | None = None,
    ):
        """``root`` None: the cache directory; ``download``: fetch the archives missing there (:mod:`.download`)."""
        if ways < 1 or shots < 1 or queries < 0 or not 0 <= shift < SIZE // 2:
            raise ValueError(f"expected ways >= 1, shots >= 1, queries >= 0, 0 <= shift < {SIZE // 2}; got {ways}, {shots}, {queries}, {shift}")
        _check_drawings(shots, queries)
        self.root = data_root(root, cache_dir)
        self.ways = ways
        self.shots = shots
        self.queries = queries
        self.output_dim = ways
        self.rotations = rotations
        self.shift = shift  # training episodes only: augmentation never touches val or test
        self.mirror = mirror  # training episodes only: a character's mirror image is a class of its own
        self.split = split
        self.cache_dir = cache_dir
        self.download = download
        self.url = url
        self._data: OmniglotData | None = None
        self._classes: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        """Pickles the arguments only: the data reaches workers once, through the object store (:meth:`attach`)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_data", "_classes")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _data=None, _classes={})

    def attach(self, data: OmniglotData) -> None:
        """Use ``data`` (the driver's, or its object-store copy on a worker) instead of reading ``root``."""
        self._data = data
        self._classes = {}

    @property
    def data(self) -> OmniglotData:
        if self._data is None:
            if self.download:
                ensure_archives(self.root, self.url)
            self._data = load_omniglot(self.root, self.cache_dir)
        return self._data

    def characters(self, split: str) -> np.ndarray:
        """Character indices of a split ("train", "val" or "test")."""
        if not self._classes:
            self._classes = split_characters(self.data, self.split)
        return self._classes[split]

    def variants(self, split: str) -> int:
        """Classes per character of ``split``: its quarter turns, and in training their mirror images."""
        return (ROTATIONS if self.rotations else 1) * (2 if self.mirror and split == "train" else 1)

    def num_classes(self, split: str) -> int:
        return len(self.characters(split)) * self.variants(split)

    def sample(self, task: TaskDescriptor, queries: int | None = None) -> Episode:
        queries = self.queries if queries is None else queries
        n, k = self.ways, self.shots
        _check_drawings(k, queries)
        chars = self.characters(task.split)
        turns = self.variants(task.split)
        if n > len(chars) * turns:
            raise DatasetError(f"{n}-way episodes need {n} classes; the {task.split} split of {self.root} has "
                               f"{len(chars) * turns} ({len(chars)} characters x {turns} turns or mirror images)")
        rng = task.rng()
        # ``choice`` returns the classes in random order, so label i = classes[i] is a random labelling.
        classes = rng.choice(len(chars) * turns, size=n, replace=False)
        drawings = np.argsort(rng.random((n, DRAWINGS)), axis=1)[:, : k + queries]
        support_order, query_order, order = rng.permutation(n * k), rng.permutation(n * queries), rng.permutation(n * (k + queries))
        s = self.shift if task.split == "train" else 0  # drawn last: the rest of the episode is the same with or without
        shifts = rng.integers(-s, s + 1, size=(n, k + queries, 2)) if s else np.zeros((n, k + queries, 2), np.int64)
        return Episode(
            characters=chars[classes // turns],
            rotations=((classes % turns) * (1 if self.rotations else ROTATIONS)).astype(np.int64),
            drawings=drawings.astype(np.int64),
            support_order=support_order,
            query_order=query_order,
            order=order,
            shifts=shifts,
        )

    def batch(self, tasks: list[TaskDescriptor], queries: int | None = None) -> TaskBatch:
        queries = self.queries if queries is None else queries
        n, k = self.ways, self.shots
        episodes = [self.sample(task, queries) for task in tasks]

        def stack(field: str, shape: tuple[int, ...]) -> np.ndarray:
            if not episodes:
                return np.zeros((0, *shape), dtype=np.int64)
            return np.stack([getattr(e, field) for e in episodes])

        chars = stack("characters", (n,))
        turns = stack("rotations", (n,))
        drawings = stack("drawings", (n, k + queries))
        shifts = stack("shifts", (n, k + queries, 2))
        support_x, support_y = self._gather(chars, turns, drawings[:, :, :k], stack("support_order", (n * k,)), shifts[:, :, :k])
        query_x, query_y = self._gather(chars, turns, drawings[:, :, k:], stack("query_order", (n * queries,)), shifts[:, :, k:])
        return {
            "support_x": torch.from_numpy(support_x),
            "support_y": torch.from_numpy(support_y),
            "query_x": torch.from_numpy(query_x),
            "query_y": torch.from_numpy(query_y),
            "order": torch.from_numpy(stack("order", (n * (k + queries),))),
        }

    def _gather(
        self, chars: np.ndarray, turns: np.ndarray, drawings: np.ndarray, order: np.ndarray, shifts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images [T, P, 1, 28, 28] and labels [T, P] of one side of the episodes.

        Position p of task t holds class-major item ``order[t, p]``, so its label is that
        item's class. Indices are resolved first and the memmap is read once, in uint8, in
        final order: no float intermediate is built and then permuted.
        """
        labels = order // max(drawings.shape[2], 1)
        char = np.take_along_axis(chars, labels, axis=1)
        t, n, per = drawings.shape
        drawing = np.take_along_axis(drawings.reshape(t, n * per), order, axis=1)
        turn = np.take_along_axis(turns, labels, axis=1)
        images = np.asarray(self.data.images[char, drawing])  # [T, P, 28, 28] uint8
        mirrored = turn >= ROTATIONS
        if mirrored.any():
            images[mirrored] = images[mirrored][..., ::-1]
        for quarter in range(1, ROTATIONS):
            hit = turn % ROTATIONS == quarter
            if hit.any():
                images[hit] = np.rot90(images[hit], quarter, axes=(-2, -1))
        images = translate(images, np.take_along_axis(shifts.reshape(t, n * per, 2), order[..., None], axis=1))
        return to_float(images)[:, :, None], labels.astype(np.int64)


def translate(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each uint8 image [..., 28, 28] moved by its (down, right) shift [..., 2], paper filling the gap."""
    s = int(np.abs(shifts).max(initial=0))
    if s == 0:
        return images
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(s, s), (s, s)], constant_values=PAPER)
    out = images.copy()
    for dy, dx in np.unique(shifts.reshape(-1, 2), axis=0):
        hit = (shifts == (dy, dx)).all(-1)
        out[hit] = padded[hit][:, s - dy : s - dy + SIZE, s - dx : s - dx + SIZE]
    return out


def _check_drawings(shots: int, queries: int) -> None:
    if shots + queries > DRAWINGS:
        raise DatasetError(f"an episode needs shots + queries = {shots} + {queries} = {shots + queries} distinct "
                           f"drawings per class; Omniglot has {DRAWINGS} per character")
