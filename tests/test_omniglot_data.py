"""Omniglot loading, caching, splits, episodes and one-shot runs, on the real small sets.

Workers rebuild episodes from descriptors and map one shared cache, and evaluation reads
run folders through the same preprocessing as training; these tests pin each of those
guarantees to real values from the archives, not to mocks.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import OMNIGLOT, OMNIGLOT_SMALL, omniglot_root
from metaorch.tasks.base import TaskDescriptor, descriptors
from metaorch.tasks.omniglot import (
    DatasetError,
    OmniglotData,
    OmniglotTasks,
    load_omniglot,
    preprocess_png,
    read_runs,
    split_characters,
    to_float,
    write_runs,
)

SMALL1, SMALL2 = OMNIGLOT_SMALL
ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit", "Tagalog"]
CHARACTERS = {"Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Japanese_(katakana)": 47, "Korean": 40,
              "Latin": 26, "Sanskrit": 42, "Tagalog": 17}
KEYS = ("support_x", "support_y", "query_x", "query_y", "order")


@pytest.fixture(scope="module")
def root() -> Path:
    return omniglot_root()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def data(root: Path, cache: Path) -> OmniglotData:
    return load_omniglot(root, cache)


def only_small1(tmp_path: Path) -> Path:
    (tmp_path / "one").mkdir()
    os.symlink(OMNIGLOT / f"{SMALL1}.zip", tmp_path / "one" / f"{SMALL1}.zip")
    return tmp_path / "one"


def drawing(fill_seed: int) -> Image.Image:
    """A 105x105 1-bit image like Omniglot's: white paper with a random black block of ink."""
    rng = np.random.default_rng(fill_seed)
    pixels = np.ones((105, 105), dtype=bool)
    r, c = rng.integers(10, 80, size=2)
    pixels[r : r + 20, c : c + 15] = False
    return Image.fromarray(pixels)


def fake_archive(folder: Path, chars: dict[str, int], drawings: int = 20) -> None:
    """An extracted archive ``folder/<Alphabet>/characterNN/<id>_<drawer>.png``."""
    for alphabet, count in chars.items():
        for c in range(1, count + 1):
            d = folder / alphabet / f"character{c:02d}"
            d.mkdir(parents=True)
            for j in range(1, drawings + 1):
                drawing(c * 100 + j).save(d / f"{c:04d}_{j:02d}.png")


# --- loading and the cache ---------------------------------------------------------------------


def test_small_sets_load_deduplicated(root: Path, data: OmniglotData) -> None:
    """Both small zips give 8 alphabets; Greek and Latin, in both zips with identical files, appear once."""
    with zipfile.ZipFile(root / f"{SMALL1}.zip") as a, zipfile.ZipFile(root / f"{SMALL2}.zip") as b:
        for member in ("Greek/character03/0396_07.png", "Latin/character26/0708_20.png"):
            assert a.read(f"{SMALL1}/{member}") == b.read(f"{SMALL2}/{member}")
        raw = a.read(f"{SMALL1}/Korean/character05/0647_03.png")
    assert data.source == "small"
    assert data.alphabets == ALPHABETS
    assert data.images.shape == (sum(CHARACTERS.values()), 20, 28, 28) == (242, 20, 28, 28)
    assert data.images.dtype == np.uint8 and isinstance(data.images, np.memmap)
    assert len(set(data.char_names)) == len(data.char_names) == 242
    for i, alphabet in enumerate(ALPHABETS):
        names = [n for n in data.char_names if n.startswith(alphabet + "/")]
        assert len(names) == CHARACTERS[alphabet] == int((data.char_alphabet == i).sum())
    # Characters sorted within alphabets, drawings by file name: Korean/character05 drawing _03 is [.., 2].
    c = data.char_names.index("Korean/character05")
    assert data.char_names[c - 1] == "Korean/character04" and data.char_alphabet[c] == ALPHABETS.index("Korean")
    assert np.array_equal(data.images[c, 2], preprocess_png(raw))
    # Ink is 1, paper 0: strokes are a small part of the image, and corners are paper.
    x = to_float(data.images)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert 0.03 < x.mean() < 0.2
    assert x[:, :, 0, 0].max() == 0.0


def test_cache_is_reused_then_rebuilt_when_corrupt(root: Path, data: OmniglotData, cache: Path, tmp_path) -> None:
    """The second load maps the same file without rewriting it; a damaged cache file is rebuilt."""
    assert data.path is not None and data.path.parent == cache
    sidecar = data.path.with_suffix(".json")
    before = data.path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns
    start = time.perf_counter()
    again = load_omniglot(root, cache)
    assert time.perf_counter() - start < 0.5
    assert (data.path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns) == before
    assert again.path == data.path and again.key == data.key
    assert np.array_equal(again.images, data.images) and again.char_names == data.char_names

    # Corruption on a copy, so the module's cache stays intact.
    other = tmp_path / "cache"
    shutil.copytree(cache, other)
    npy = other / data.path.name
    blob = bytearray(npy.read_bytes())
    blob[-500] ^= 0xFF  # one pixel changed: only the checksum can tell
    npy.write_bytes(bytes(blob))
    assert np.array_equal(load_omniglot(root, other).images, data.images)
    npy.write_bytes(npy.read_bytes()[: len(blob) // 2])  # truncated
    assert np.array_equal(load_omniglot(root, other).images, data.images)
    assert npy.stat().st_size == len(blob)


def test_extracted_folders_equal_zips(root: Path, data: OmniglotData, tmp_path) -> None:
    for name in (SMALL1, SMALL2):
        with zipfile.ZipFile(root / f"{name}.zip") as z:
            z.extractall(tmp_path / "extracted")
    folders = load_omniglot(tmp_path / "extracted", tmp_path / "cache")
    assert folders.source == "small" and folders.key != data.key
    assert folders.alphabets == data.alphabets and folders.char_names == data.char_names
    assert np.array_equal(folders.images, data.images)


def test_one_small_set_and_its_fallback_split(root: Path, data: OmniglotData, tmp_path) -> None:
    """Only small1: 5 alphabets, Greek identical to the deduplicated pair; no Tagalog/Katakana, so
    the last two alphabets in sorted order are held out."""
    one = load_omniglot(only_small1(tmp_path), tmp_path / "cache")
    assert one.alphabets == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    greek = [i for i, n in enumerate(data.char_names) if n.startswith("Greek/")]
    assert np.array_equal(one.images[one.char_alphabet == 2], data.images[greek])
    split = split_characters(one)
    names = {k: sorted({one.alphabets[a] for a in one.char_alphabet[v]}) for k, v in split.items()}
    assert names == {"train": ["Balinese", "Early_Aramaic", "Greek"], "val": ["Korean"], "test": ["Latin"]}


def test_full_set_preferred_and_in_archive_order(root: Path, tmp_path) -> None:
    """With both full archives present the small sets are ignored, and background alphabets come first."""
    fake_archive(tmp_path / "images_background", {"Zeta": 2, "Alpha": 1})
    fake_archive(tmp_path / "images_evaluation", {"Beta": 1})
    os.symlink(root / f"{SMALL1}.zip", tmp_path / f"{SMALL1}.zip")
    full = load_omniglot(tmp_path, tmp_path / "cache")
    assert full.source == "full"
    assert full.alphabets == ["Alpha", "Zeta", "Beta"]
    assert full.char_names == ["Alpha/character01", "Zeta/character01", "Zeta/character02", "Beta/character01"]
    expected = preprocess_png(tmp_path / "images_background/Zeta/character02/0002_05.png")
    assert np.array_equal(full.images[2, 4], expected)


# --- errors ------------------------------------------------------------------------------------


def test_empty_dir_names_expected_archives(tmp_path) -> None:
    with pytest.raises(DatasetError) as err:
        load_omniglot(tmp_path, tmp_path / "cache")
    message = str(err.value)
    for name in ("images_background", "images_evaluation", SMALL1, SMALL2, str(tmp_path)):
        assert name in message


def test_corrupt_and_truncated_zips(root: Path, tmp_path) -> None:
    target = tmp_path / f"{SMALL1}.zip"
    target.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DatasetError, match=f"{SMALL1}.zip"):
        load_omniglot(tmp_path, tmp_path / "cache")
    blob = (root / f"{SMALL1}.zip").read_bytes()
    target.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=f"{SMALL1}.zip"):
        load_omniglot(tmp_path, tmp_path / "cache")
    damaged = bytearray(blob)  # central directory intact, compressed data garbled: fails on read
    damaged[len(blob) // 3 : len(blob) // 3 + 2000] = bytes(2000)
    target.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=r"images_background_small1\.zip:images_background_small1/.*\.png"):
        load_omniglot(tmp_path, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_bad_folders(tmp_path) -> None:
    fake_archive(tmp_path / "a" / SMALL1, {"Alpha": 1}, drawings=19)
    with pytest.raises(DatasetError, match="expected 20 drawings.*found 19"):
        load_omniglot(tmp_path / "a", tmp_path / "cache")
    fake_archive(tmp_path / "b" / SMALL1, {"Alpha": 1})
    bad = tmp_path / "b" / SMALL1 / "Alpha/character01/0001_07.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="0001_07.png"):
        load_omniglot(tmp_path / "b", tmp_path / "cache")
    fake_archive(tmp_path / "c" / SMALL1, {"Alpha": 1})
    drawing(0).save(tmp_path / "c" / SMALL1 / "Alpha" / "stray.png")
    with pytest.raises(DatasetError, match="wrong layout"):
        load_omniglot(tmp_path / "c", tmp_path / "cache")


# --- splits ------------------------------------------------------------------------------------


def alphabets_of(data: OmniglotData, chars: np.ndarray) -> set[str]:
    return {data.alphabets[a] for a in data.char_alphabet[chars]}


def test_auto_split_holds_whole_alphabets_out(data: OmniglotData) -> None:
    split = split_characters(data)
    assert alphabets_of(data, split["val"]) == {"Tagalog"}
    assert alphabets_of(data, split["test"]) == {"Japanese_(katakana)"}
    assert alphabets_of(data, split["train"]) == set(ALPHABETS) - {"Tagalog", "Japanese_(katakana)"}
    assert [len(split[k]) for k in ("train", "val", "test")] == [178, 17, 47]
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(242))


def test_explicit_split_and_its_errors(data: OmniglotData) -> None:
    split = split_characters(data, {"train": ["Greek", "Latin"], "val": ["Korean"], "test": ["Balinese"]})
    assert alphabets_of(data, split["train"]) == {"Greek", "Latin"} and len(split["train"]) == 50
    assert alphabets_of(data, split["test"]) == {"Balinese"}
    with pytest.raises(DatasetError, match="Klingon"):
        split_characters(data, {"train": ["Greek"], "test": ["Klingon"]})
    with pytest.raises(DatasetError, match="'Greek'.*train.*test"):
        split_characters(data, {"train": ["Greek"], "test": ["Greek"]})
    with pytest.raises(DatasetError, match="holdout"):
        split_characters(data, {"train": ["Greek"], "holdout": ["Latin"]})


def test_a_split_without_val_trains_without_meta_validation(root: Path, cache: Path) -> None:
    """``data.split`` may leave val out (Snell et al. train their final models on train + val):
    the driver's data checks pass and meta-validation logs nothing, where the auto split validates."""
    from metaorch.orchestrator.config import from_dict
    from metaorch.orchestrator.supervised import SupervisedRunner

    def runner(split: object) -> SupervisedRunner:
        config = {
            "task": {"name": "omniglot", "ways": 5, "shots": 1, "queries": 2},
            "data": {"root": str(root), "cache_dir": str(cache), "split": split},
            "algorithm": {"name": "protonet"},
            "model": {"filters": 4},
            "outer": {"iterations": 1},
            "eval": {"queries": 2, "val_tasks": 2},
        }
        return SupervisedRunner(from_dict(config, "(test)"))

    trainval = runner({"train": [a for a in ALPHABETS if a != "Japanese_(katakana)"], "test": ["Japanese_(katakana)"]})
    assert not trainval.config.data.validates and trainval.validate(1) == {}  # before it would need a learner
    assert runner({"train": ["Greek"], "val": ["Latin"], "test": ["Korean"]}).config.data.validates and runner("auto").config.data.validates


def test_full_auto_split_is_the_standard_character_split(data: OmniglotData) -> None:
    """Vinyals et al.: archive order, 1200 train, 100 val, the remaining 323 test."""
    names = [f"A{i // 20:03d}/character{i % 20 + 1:02d}" for i in range(1623)]
    full = OmniglotData(np.zeros((1623, 20, 28, 28), np.uint8), sorted({n[:4] for n in names}),
                        np.arange(1623) // 20, names, "full", "k", None)
    split = split_characters(full)
    assert np.array_equal(split["train"], np.arange(1200))
    assert np.array_equal(split["val"], np.arange(1200, 1300))
    assert np.array_equal(split["test"], np.arange(1300, 1623))


# --- episodes ----------------------------------------------------------------------------------


def family(root: Path, cache: Path, **kw) -> OmniglotTasks:
    return OmniglotTasks(root, cache_dir=cache, **kw)


def expected_side(fam: OmniglotTasks, task: TaskDescriptor, queries: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """A per-image loop over the episode's indices: the reference the vectorised gather must match."""
    ep = fam.sample(task, queries)
    k = fam.shots
    per, order, offset = (k, ep.support_order, 0) if side == "support" else (queries, ep.query_order, k)
    xs, ys = [], []
    for item in order:
        label, j = divmod(int(item), per)
        image = fam.data.images[ep.characters[label], ep.drawings[label, offset + j]]
        if ep.rotations[label] >= 4:  # a mirror-image class: mirrored left-right, then turned
            image = image[:, ::-1]
        image = np.rot90(image, ep.rotations[label] % 4)
        dy, dx = ep.shifts[label, offset + j]
        moved = np.full_like(image, 255)  # paper; then the drawing pasted at its offset, cut at the border
        moved[max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)] = image[max(-dy, 0) : 28 - max(dy, 0), max(-dx, 0) : 28 - max(dx, 0)]
        xs.append(to_float(moved)[None])
        ys.append(label)
    return np.stack(xs), np.array(ys)


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "rotations", "shift", "mirror"),
    [(5, 1, 15, True, 0, False), (20, 5, 3, False, 0, False), (5, 2, 3, True, 3, False), (20, 1, 3, True, 2, True), (20, 1, 3, False, 0, True)],
)
def test_episodes_match_reference_and_are_consistent(root, cache, ways, shots, queries, rotations, shift, mirror) -> None:
    fam = family(root, cache, ways=ways, shots=shots, queries=queries, rotations=rotations, shift=shift, mirror=mirror)
    ds = descriptors(seed=7, split="train", iteration=3, count=4)
    batch = fam.batch(ds)
    assert set(batch) == set(KEYS)
    n = ways
    assert batch["support_x"].shape == (4, n * shots, 1, 28, 28) and batch["support_x"].dtype == torch.float32
    assert batch["query_x"].shape == (4, n * queries, 1, 28, 28) and batch["query_x"].dtype == torch.float32
    assert batch["support_y"].shape == (4, n * shots) and batch["support_y"].dtype == torch.int64
    assert batch["query_y"].shape == (4, n * queries) and batch["query_y"].dtype == torch.int64
    assert batch["order"].shape == (4, n * (shots + queries)) and batch["order"].dtype == torch.int64
    train = set(fam.characters("train").tolist())
    for t, task in enumerate(ds):
        for side in ("support", "query"):
            x, y = expected_side(fam, task, queries, side)
            assert np.array_equal(batch[f"{side}_x"][t].numpy(), x), side
            assert np.array_equal(batch[f"{side}_y"][t].numpy(), y), side
        assert np.array_equal(np.bincount(batch["support_y"][t].numpy(), minlength=n), np.full(n, shots))
        assert np.array_equal(np.bincount(batch["query_y"][t].numpy(), minlength=n), np.full(n, queries))
        assert np.array_equal(np.sort(batch["order"][t].numpy()), np.arange(n * (shots + queries)))
        ep = fam.sample(task)
        assert len({(c, r) for c, r in zip(ep.characters.tolist(), ep.rotations.tolist())}) == n  # distinct classes
        assert set(ep.characters.tolist()) <= train
        assert all(len(set(row)) == shots + queries for row in ep.drawings.tolist())  # support/query disjoint
        assert (ep.rotations % 4 == 0).all() != rotations
        assert (ep.rotations >= 4).any() == mirror
        # Labels are a random assignment, and the support is shuffled rather than class-major.
        assert not np.array_equal(batch["support_y"][t].numpy(), np.repeat(np.arange(n), shots))


def test_shift_moves_only_training_drawings_and_changes_nothing_else(root, cache) -> None:
    plain, moved = family(root, cache, queries=5), family(root, cache, queries=5, shift=2)
    train = descriptors(seed=3, split="train", iteration=0, count=6)
    a, b = plain.batch(train), moved.batch(train)
    for key in ("support_y", "query_y", "order"):  # the same episode: classes, labels and orders
        assert torch.equal(a[key], b[key]), key
    shifts = np.concatenate([moved.sample(t).shifts.reshape(-1, 2) for t in train])
    assert shifts.min() == -2 and shifts.max() == 2 and (shifts != 0).any(1).mean() > 0.5
    assert not torch.equal(a["query_x"], b["query_x"])
    ink_a, ink_b = a["query_x"].sum((-1, -2)), b["query_x"].sum((-1, -2))
    assert (ink_b <= ink_a + 1e-4).all()  # moved, not redrawn: ink can only fall off the border (exact images: the reference test)
    for split in ("val", "test"):  # augmentation never touches what the model is measured on
        held = descriptors(seed=3, split=split, iteration=0, count=3)
        x, y = plain.batch(held), moved.batch(held)
        assert all(torch.equal(x[k], y[k]) for k in KEYS), split
    with pytest.raises(ValueError, match="shift"):
        family(root, cache, shift=14)


def test_mirror_adds_training_classes_only(root, cache) -> None:
    plain, mirrored = family(root, cache), family(root, cache, mirror=True)
    assert mirrored.num_classes("train") == 2 * plain.num_classes("train")
    turns = np.concatenate([mirrored.sample(t).rotations for t in descriptors(seed=3, split="train", iteration=0, count=20)])
    assert set(turns.tolist()) == set(range(8))  # 4 quarter turns, each also mirrored
    for split in ("val", "test"):  # augmentation never touches what the model is measured on
        assert mirrored.num_classes(split) == plain.num_classes(split)
        held = descriptors(seed=3, split=split, iteration=0, count=3)
        x, y = plain.batch(held), mirrored.batch(held)
        assert all(torch.equal(x[k], y[k]) for k in KEYS), split


def test_episodes_are_pure_functions_of_descriptors(root, cache) -> None:
    ds = descriptors(seed=1, split="train", iteration=0, count=5)
    a = family(root, cache).batch(ds)
    b = family(root, cache).batch(list(ds))
    alone = family(root, cache).batch([ds[3]])
    for key in KEYS:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(alone[key][0], a[key][3]), key
    others = [TaskDescriptor(2, "train", 0, 0), TaskDescriptor(1, "train", 1, 0), TaskDescriptor(1, "train", 0, 1)]
    changed = family(root, cache).batch(others)
    for i in range(3):
        assert not torch.equal(changed["support_x"][i], a["support_x"][0])


def test_family_pickles_small_and_rebuilds_identically(root, cache) -> None:
    fam = family(root, cache, ways=20)
    ds = descriptors(seed=0, split="val", iteration=0, count=2)
    before = fam.batch(ds)
    blob = pickle.dumps(fam)
    assert len(blob) < 2000  # arguments only, never the image array
    after = pickle.loads(blob).batch(ds)
    for key in KEYS:
        assert torch.equal(before[key], after[key]), key
    assert fam.input_shape == (1, 28, 28) and fam.output_dim == 20 and fam.loss == "cross_entropy"


def test_splits_rotations_and_query_override(root, cache, data) -> None:
    rotated, plain = family(root, cache), family(root, cache, rotations=False)
    assert rotated.num_classes("val") == 4 * plain.num_classes("val") == 4 * 17
    val, test = (descriptors(seed=0, split=s, iteration=0, count=40) for s in ("val", "test"))
    assert {data.char_names[c].split("/")[0] for t in val for c in rotated.sample(t).characters} == {"Tagalog"}
    assert {data.char_names[c].split("/")[0] for t in test for c in plain.sample(t).characters} == {
        "Japanese_(katakana)"}
    assert {r for t in val for r in rotated.sample(t).rotations.tolist()} == {0, 1, 2, 3}
    assert all((plain.sample(t).rotations == 0).all() for t in val)
    base, more = rotated.batch(val[:3]), rotated.batch(val[:3], queries=4)
    assert more["query_x"].shape == (3, 20, 1, 28, 28)
    assert torch.equal(base["support_x"], more["support_x"]) and torch.equal(base["support_y"], more["support_y"])
    empty = rotated.batch([])
    assert empty["support_x"].shape == (0, 5, 1, 28, 28) and empty["query_y"].shape == (0, 75)


def test_episode_errors(root, cache) -> None:
    with pytest.raises(DatasetError, match="5 \\+ 16 = 21"):
        family(root, cache, shots=5, queries=16)
    fam = family(root, cache, shots=1, queries=15)
    with pytest.raises(DatasetError, match="1 \\+ 20 = 21"):
        fam.batch(descriptors(0, "train", 0, 1), queries=20)
    with pytest.raises(DatasetError, match="18-way.*val split.*has 17"):
        family(root, cache, ways=18, rotations=False).batch(descriptors(0, "val", 0, 1))
    assert family(root, cache, ways=18).batch(descriptors(0, "val", 0, 1))["support_y"].shape == (1, 18)


# --- one-shot runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs_dir(root: Path, cache: Path, tmp_path_factory) -> Path:
    return write_runs(root, tmp_path_factory.mktemp("runs") / "all_runs", runs=3, ways=20, seed=0, cache_dir=cache)


def test_written_runs_have_the_original_format(runs_dir: Path) -> None:
    assert sorted(p.name for p in runs_dir.iterdir()) == ["run01", "run02", "run03"]
    run = runs_dir / "run02"
    assert sorted(p.name for p in (run / "training").iterdir()) == [f"class{i:02d}.png" for i in range(1, 21)]
    assert sorted(p.name for p in (run / "test").iterdir()) == [f"item{i:02d}.png" for i in range(1, 21)]
    lines = (run / "class_labels.txt").read_text().splitlines()
    assert len(lines) == 20 and lines[0].startswith("run02/test/item01.png run02/training/class")
    with Image.open(run / "training/class01.png") as image:
        assert image.size == (105, 105)


def test_runs_round_trip_against_the_data(runs_dir: Path, data: OmniglotData) -> None:
    """Each training image is one test-split drawing by a single drawer; each test item is the same
    character as its labelled training class, by a different single drawer."""
    test_chars = split_characters(data)["test"]
    where = {to_float(data.images[c, j]).tobytes(): (int(c), j) for c in test_chars for j in range(20)}
    runs = read_runs(runs_dir)
    assert [r.name for r in runs] == ["run01", "run02", "run03"]
    drawers = set()
    for run in runs:
        assert run.support_x.shape == run.query_x.shape == (20, 1, 28, 28) and run.support_x.dtype == np.float32
        assert np.array_equal(run.support_y, np.arange(20))
        assert np.array_equal(np.sort(run.query_y), np.arange(20))
        support = [where[x[0].tobytes()] for x in run.support_x]
        query = [where[x[0].tobytes()] for x in run.query_x]
        assert len({c for c, _ in support}) == 20
        assert len({j for _, j in support}) == 1 and len({j for _, j in query}) == 1
        assert support[0][1] != query[0][1]
        assert [c for c, _ in query] == [support[y][0] for y in run.query_y]
        drawers.add((support[0][1], query[0][1]))
        batch = run.to_batch()
        assert batch["support_x"].shape == (1, 20, 1, 28, 28) and batch["query_y"].shape == (1, 20)
    assert len(drawers) > 1


def test_runs_are_seeded_and_zip_reads_the_same(root, cache, runs_dir: Path, tmp_path) -> None:
    again = write_runs(root, tmp_path / "again", runs=3, seed=0, cache_dir=cache)
    other = write_runs(root, tmp_path / "other", runs=1, seed=1, cache_dir=cache)
    labels = (runs_dir / "run01/class_labels.txt").read_text()
    assert (again / "run01/class_labels.txt").read_text() == labels
    assert (again / "run03/test/item07.png").read_bytes() == (runs_dir / "run03/test/item07.png").read_bytes()
    assert (other / "run01/class_labels.txt").read_text() != labels
    archive = shutil.make_archive(str(tmp_path / "all_runs"), "zip", runs_dir.parent, runs_dir.name)
    for a, b in zip(read_runs(runs_dir), read_runs(archive), strict=True):
        assert a.name == b.name
        for field in ("support_x", "support_y", "query_x", "query_y"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
    with pytest.raises(DatasetError, match="not an empty folder"):
        write_runs(root, runs_dir, runs=1, cache_dir=cache)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("delete", "run02 has no class_labels.txt"),
        ("format", "run02/class_labels.txt line 3: expected"),
        ("missing", "run02/class_labels.txt line 3 names run02/test/item99.png, which is missing"),
    ],
)
def test_malformed_runs(runs_dir: Path, tmp_path, damage: str, message: str) -> None:
    copy = shutil.copytree(runs_dir, tmp_path / "runs")
    labels = copy / "run02/class_labels.txt"
    lines = labels.read_text().splitlines()
    if damage == "delete":
        labels.unlink()
    elif damage == "format":
        lines[2] = lines[2].replace(" ", ",")
    else:
        lines[2] = "run02/test/item99.png " + lines[2].split()[1]
    if damage != "delete":
        labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message.replace("/", ".").replace("(", ".")):
        read_runs(copy)
