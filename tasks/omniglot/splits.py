"""Which characters each split may draw its classes from.

Meta-learning measures generalisation to unseen characters, so the splits are disjoint
sets of characters: the standard character split on the full set, whole held-out
alphabets on the small sets (which are too small for the standard split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from metaorch.tasks.omniglot.data import OmniglotData
from metaorch.tasks.omniglot.errors import DatasetError

SPLITS = ("train", "val", "test")
SplitSpec = str | Mapping[str, Sequence[str]]

# Vinyals et al. 2016 / Finn et al. 2017: characters in archive order, 1200 train, 100 val, the rest test.
FULL_TRAIN, FULL_VAL = 1200, 100
# Small sets: two whole alphabets held out.
SMALL_VAL, SMALL_TEST = "Tagalog", "Japanese_(katakana)"


def split_alphabets(data: OmniglotData, split: SplitSpec = "auto") -> dict[str, list[str]] | None:
    """Alphabet names per split, or None for the full set's "auto", which splits by character."""
    if isinstance(split, str):
        if split != "auto":
            raise DatasetError(f"unknown Omniglot split {split!r}; expected 'auto' or a mapping of "
                               f"{'/'.join(SPLITS)} to alphabet names")
        if data.source == "full":
            return None
        names = data.alphabets
        if SMALL_VAL in names and SMALL_TEST in names:
            val, test = SMALL_VAL, SMALL_TEST
        elif len(names) >= 3:
            *_, val, test = sorted(names)
        else:
            raise DatasetError(f"the Omniglot small sets found hold {len(names)} alphabet(s) {names}; the 'auto' "
                               f"split needs at least 3 (train, val, test)")
        return {"train": [a for a in names if a not in (val, test)], "val": [val], "test": [test]}
    unknown_keys = set(split) - set(SPLITS)
    if unknown_keys:
        raise DatasetError(f"unknown Omniglot split name(s) {sorted(unknown_keys)}; expected {list(SPLITS)}")
    chosen = {name: [split[name]] if isinstance(split.get(name), str) else list(split.get(name, ())) for name in SPLITS}
    owner: dict[str, str] = {}
    for name in SPLITS:
        for alphabet in chosen[name]:
            if alphabet not in data.alphabets:
                raise DatasetError(f"unknown alphabet {alphabet!r} in the {name} split; the {data.source} Omniglot "
                                   f"data holds {data.alphabets}")
            if alphabet in owner:
                raise DatasetError(f"alphabet {alphabet!r} is in both the {owner[alphabet]} and the {name} split; "
                                   f"splits must be disjoint")
            owner[alphabet] = name
    return chosen


def split_characters(data: OmniglotData, split: SplitSpec = "auto") -> dict[str, np.ndarray]:
    """Character indices (int64, ascending) for "train", "val" and "test"."""
    alphabets = split_alphabets(data, split)
    count = len(data.char_names)
    if alphabets is None:
        if count <= FULL_TRAIN + FULL_VAL:
            raise DatasetError(f"the full Omniglot set holds {count} characters; the standard split needs more "
                               f"than {FULL_TRAIN + FULL_VAL}")
        index = np.arange(count, dtype=np.int64)
        end = FULL_TRAIN + FULL_VAL
        return {"train": index[:FULL_TRAIN], "val": index[FULL_TRAIN:end], "test": index[end:]}
    out = {}
    for name in SPLITS:
        ids = [data.alphabets.index(a) for a in alphabets[name]]
        out[name] = np.flatnonzero(np.isin(data.char_alphabet, ids)).astype(np.int64)
    return out
