"""The search space of ``metaorch tune``: SPACE.yaml read, checked and turned into Ray Tune's primitives.

SPACE.yaml maps dotted config keys to one search primitive each::

    algorithm.inner_lr: {loguniform: [1.0e-3, 1.0e-1]}
    algorithm.inner_steps: {choice: [1, 3, 5]}
    outer.lr: {uniform: [1.0e-4, 1.0e-2]}
    outer.meta_batch: {randint: [8, 33]}     # Tune's randint: the upper end is excluded
    model.hidden: {grid: [[40, 40], [80]]}   # every value, for every sample

Every value a trial could draw (a range: both ends) is validated as the config would be before
anything starts, so a bad space is one line naming the key and the value, exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaorch.orchestrator.config import Config, deep_merge, from_dict, read_yaml_mapping
from metaorch.orchestrator.errors import UserError

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def trial_config(base: Config, sample: Mapping[str, Any]) -> Config:
    """``base`` with the trial's values (dotted keys) in place."""
    return from_dict(deep_merge(base.model_dump(mode="json"), _nested(sample)), "(tune trial)")


def _candidates(kind: str, args: Any, where: str) -> list[Any]:
    """The values a primitive can take that validation must accept (a range: both ends)."""
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: expected a non-empty list of values")
        return args
    numbers = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not all(math.isfinite(a) for a in args) or not args[0] < args[1]:
        raise UserError(f"{where}: expected [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise UserError(f"{where}: loguniform needs low > 0")
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise UserError(f"{where}: randint takes integers (high excluded)")
        return [args[0], args[1] - 1]
    return list(args)


def read_space(space: str | Path | Mapping[str, Any], config: Config) -> dict[str, tuple[str, Any]]:
    """``{key: (kind, args)}`` from SPACE.yaml or a mapping, every value a trial could draw
    checked against the config's validation first: a bad space is one line naming the key."""
    source = f"--space {space}" if isinstance(space, (str, Path)) else "space"
    raw = read_yaml_mapping(space, "--space") if isinstance(space, (str, Path)) else dict(space)
    if not raw:
        raise UserError(f"{source}: empty; give at least one key, e.g. algorithm.inner_lr: {{loguniform: [1.0e-3, 1.0e-1]}}")
    out: dict[str, tuple[str, Any]] = {}
    for key, spec in raw.items():
        where = f"{source}: {key}: {spec!r}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UserError(f"{where}: expected one of {{{': [...]}, {'.join(KINDS)}: [...]}}")
        kind, args = next(iter(spec.items()))
        for value in _candidates(kind, args, where):
            try:
                trial_config(config, {key: value})
            except UserError as exc:
                reason = str(exc).removeprefix("invalid config (tune trial): ")
                if reason.endswith(": unknown key"):
                    raise UserError(f"{source}: {key}: no such config field") from None
                raise UserError(f"{where}: {value!r} is not a valid value ({reason})") from None
        out[str(key)] = (kind, args)
    return out


def domains(space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    from ray import tune

    make = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    return {
        k: tune.choice(a) if kind == "choice" else tune.grid_search(a) if kind == "grid" else make[kind](*a)
        for k, (kind, a) in space.items()
    }
