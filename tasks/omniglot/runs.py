"""One-shot classification runs in the format of the original Omniglot repository.

A runs folder holds ``runNN/training/classNN.png`` (one drawing per class),
``runNN/test/itemNN.png`` and ``runNN/class_labels.txt`` with lines
``runNN/test/itemXX.png runNN/training/classYY.png``. Reading them applies exactly the
preprocessing used for training, so a score on these runs measures the model, not a
mismatch in pixels.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from metaorch.tasks.base import TaskBatch
from metaorch.tasks.omniglot.archives import DRAWINGS, characters, find_archives
from metaorch.tasks.omniglot.data import load_omniglot
from metaorch.tasks.omniglot.errors import DatasetError
from metaorch.tasks.omniglot.images import preprocess_png, to_float
from metaorch.tasks.omniglot.splits import SplitSpec, split_characters

RUN = re.compile(r"run\d+")


@dataclass(frozen=True)
class OneShotRun:
    name: str  # "run01"
    support_x: np.ndarray  # float32 [C, 1, 28, 28], one drawing per class
    support_y: np.ndarray  # int64 [C] = 0..C-1, class i is training/ file i in name order
    query_x: np.ndarray  # float32 [M, 1, 28, 28], in class_labels.txt order
    query_y: np.ndarray  # int64 [M], the index of the correct training class

    def to_batch(self) -> TaskBatch:
        """The run as a one-task batch, shaped like ``OmniglotTasks.batch``."""
        return {
            "support_x": torch.from_numpy(self.support_x)[None],
            "support_y": torch.from_numpy(self.support_y)[None],
            "query_x": torch.from_numpy(self.query_x)[None],
            "query_y": torch.from_numpy(self.query_y)[None],
            "order": torch.arange(len(self.support_y) + len(self.query_y))[None],
        }


class _Tree:
    """The files of a folder or a zip, by relative POSIX path."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise DatasetError(f"{path} is not a readable zip of one-shot runs ({err})") from err
            self.files = {n for n in self.zip.namelist() if not n.endswith("/")}
        elif path.is_dir():
            self.files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        else:
            raise DatasetError(f"one-shot runs {path} not found; expected a folder or zip holding runNN/ folders")

    def read(self, rel: str) -> bytes:
        try:
            return self.zip.read(rel) if self.zip is not None else (self.path / rel).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise DatasetError(f"cannot read {self.path}/{rel} ({err})") from err

    def image(self, rel: str) -> np.ndarray:
        return to_float(preprocess_png(self.read(rel), name=f"{self.path}/{rel}"))[None]


def read_runs(path: str | Path) -> list[OneShotRun]:
    """Every run under ``path`` (a folder or zip with runNN/ at its top or inside one top folder)."""
    tree = _Tree(Path(path).expanduser())
    try:
        prefix = _runs_prefix(tree)
        names = sorted({rel[len(prefix):].split("/", 1)[0] for rel in tree.files if rel.startswith(prefix)})
        names = sorted((n for n in names if RUN.fullmatch(n)), key=lambda n: int(n[3:]))
        return [_read_run(tree, prefix, name) for name in names]
    finally:
        if tree.zip is not None:
            tree.zip.close()


def _runs_prefix(tree: _Tree) -> str:
    tops = {rel.split("/", 1)[0] for rel in tree.files if "/" in rel}
    if any(RUN.fullmatch(t) for t in tops):
        return ""
    if len(tops) == 1:
        top = next(iter(tops))
        if any(RUN.fullmatch(rel.split("/")[1]) for rel in tree.files if rel.count("/") >= 2 and rel.startswith(top)):
            return f"{top}/"
    raise DatasetError(f"{tree.path} holds no runNN/ folders; expected runNN/training/classNN.png, "
                       f"runNN/test/itemNN.png and runNN/class_labels.txt")


def _read_run(tree: _Tree, prefix: str, name: str) -> OneShotRun:
    where = f"{tree.path}: {name}"
    labels_file = f"{prefix}{name}/class_labels.txt"
    if labels_file not in tree.files:
        raise DatasetError(f"{where} has no class_labels.txt; expected {name}/class_labels.txt")
    training = sorted(rel[len(prefix):] for rel in tree.files
                      if rel.startswith(f"{prefix}{name}/training/") and rel.lower().endswith(".png"))
    if not training:
        raise DatasetError(f"{where} has no training images; expected {name}/training/classNN.png")
    index = {rel: i for i, rel in enumerate(training)}
    items, labels = [], []
    try:
        text = tree.read(labels_file).decode()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{where}/class_labels.txt is not text ({err})") from err
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if (len(parts) != 2 or PurePosixPath(parts[0]).parent.as_posix() != f"{name}/test"
                or PurePosixPath(parts[1]).parent.as_posix() != f"{name}/training"):
            raise DatasetError(f"{where}/class_labels.txt line {number}: expected '{name}/test/itemXX.png "
                               f"{name}/training/classYY.png', found {line.strip()!r}")
        for rel in parts:
            if prefix + rel not in tree.files:
                raise DatasetError(f"{where}/class_labels.txt line {number} names {rel}, which is missing")
        if parts[1] not in index:
            raise DatasetError(f"{where}/class_labels.txt line {number} names {parts[1]}, which is not a PNG")
        items.append(parts[0])
        labels.append(index[parts[1]])
    if not items:
        raise DatasetError(f"{where}/class_labels.txt lists no test items")
    return OneShotRun(
        name=name,
        support_x=np.stack([tree.image(prefix + rel) for rel in training]),
        support_y=np.arange(len(training), dtype=np.int64),
        query_x=np.stack([tree.image(prefix + rel) for rel in items]),
        query_y=np.array(labels, dtype=np.int64),
    )


def write_runs(
    root: str | Path,
    out_dir: str | Path,
    split: SplitSpec = "auto",
    runs: int = 20,
    ways: int = 20,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write ``runs`` one-shot runs from the original PNGs of the test split, as in Lake et al.

    Each run takes ``ways`` characters of one test alphabet; its training images are all by
    one drawer and its test images all by another (drawer = the drawing's position in file
    name order, the ``_NN`` suffix). Run r is a function of (seed, r) only. The folder is
    assembled beside ``out_dir`` and moved into place, so it is never left half written.
    """
    if not 1 <= runs <= 99 or not 1 <= ways <= 99:
        raise ValueError(f"expected 1..99 runs and ways (names are two digits), got runs={runs}, ways={ways}")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not an empty folder; expected a new folder for the runs")
    data = load_omniglot(root, cache_dir)
    test = split_characters(data, split)["test"]
    by_alphabet = {a: test[data.char_alphabet[test] == i] for i, a in enumerate(data.alphabets)}
    eligible = sorted(a for a, chars in by_alphabet.items() if len(chars) >= ways)
    if not eligible:
        sizes = {a: len(c) for a, c in by_alphabet.items() if len(c)}
        raise DatasetError(f"no test alphabet of {root} has {ways} characters for {ways}-way runs; test split: {sizes}")
    source, archives = find_archives(root)
    try:
        originals = {c.full_name: c for c in characters(source, archives)}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        tmp.chmod(0o755)  # mkdtemp makes it private; the runs are for anyone to read
        try:
            for r in range(runs):
                _write_run(tmp, f"run{r + 1:02d}", np.random.default_rng([seed, r]), eligible, by_alphabet,
                           data.char_names, originals, ways)
            if out.is_dir():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        for a in archives:
            a.close()
    return out


def _write_run(tmp: Path, name: str, rng: np.random.Generator, eligible: list[str], by_alphabet: dict,
               char_names: list[str], originals: dict, ways: int) -> None:
    alphabet = eligible[rng.integers(len(eligible))]
    chars = rng.choice(by_alphabet[alphabet], size=ways, replace=False)  # class c+1 is chars[c]
    train_drawer, test_drawer = rng.choice(DRAWINGS, size=2, replace=False)
    item_class = rng.permutation(ways)  # item i+1 shows class item_class[i]+1
    (tmp / name / "training").mkdir(parents=True)
    (tmp / name / "test").mkdir()
    lines = []
    for c, char in enumerate(chars):
        original = originals[char_names[char]]
        member = original.drawings[train_drawer]
        (tmp / name / "training" / f"class{c + 1:02d}.png").write_bytes(original.archive.read(member))
    for i, c in enumerate(item_class):
        original = originals[char_names[chars[c]]]
        member = original.drawings[test_drawer]
        (tmp / name / "test" / f"item{i + 1:02d}.png").write_bytes(original.archive.read(member))
        lines.append(f"{name}/test/item{i + 1:02d}.png {name}/training/class{c + 1:02d}.png\n")
    (tmp / name / "class_labels.txt").write_text("".join(lines))
