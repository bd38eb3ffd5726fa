"""Finding and reading the Omniglot archives, as zips or as extracted folders.

Both forms expose the same relative paths (``<Alphabet>/<character>/<drawing>.png`` under a
top folder named like the archive), so everything above this module is indifferent to how
the data was unpacked.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from metaorch.tasks.omniglot.errors import DatasetError

Source = Literal["full", "small"]
FULL = ("images_background", "images_evaluation")
SMALL = ("images_background_small1", "images_background_small2")
DRAWINGS = 20
LAYOUT = "<Alphabet>/<character>/<drawing>.png"


def _ignored(parts: tuple[str, ...]) -> bool:
    """Archiver debris (macOS resource forks, dot files) is not data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class Archive:
    """One of the four Omniglot archives: ``<root>/<name>.zip`` or the folder ``<root>/<name>/``."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = path
        self.is_zip = path.suffix == ".zip"
        self._zip: zipfile.ZipFile | None = None
        self._members: list[str] | None = None

    def __repr__(self) -> str:
        return f"Archive({self.name!r}, {str(self.path)!r})"

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise DatasetError(f"{self.path} is not a readable zip archive ({err}); expected {self.name}.zip "
                                   f"holding {self.name}/{LAYOUT}") from err
        return self._zip

    def members(self) -> list[str]:
        """Relative paths ``Alphabet/character/drawing.png`` of every drawing, sorted."""
        if self._members is None:
            if self.is_zip:
                names = [n for n in self._open_zip().namelist() if not n.endswith("/")]
                rel = [PurePosixPath(n).parts for n in names]
                if any(parts[0] != self.name for parts in rel if not _ignored(parts)):
                    odd = next(n for n, parts in zip(names, rel) if not _ignored(parts) and parts[0] != self.name)
                    raise DatasetError(f"{self.path}: wrong layout, expected every entry under {self.name}/{LAYOUT}, "
                                       f"found {odd}")
                rel = [parts[1:] for parts in rel if not _ignored(parts)]
            else:
                rel = [p.relative_to(self.path).parts for p in self.path.rglob("*") if p.is_file()]
                rel = [parts for parts in rel if not _ignored(parts)]
            pngs = [parts for parts in rel if parts[-1].lower().endswith(".png")]
            for parts in pngs:
                if len(parts) != 3:
                    raise DatasetError(f"{self.path}: wrong layout, expected {self.name}/{LAYOUT}, "
                                       f"found {self.name}/{'/'.join(parts)}")
            if not pngs:
                raise DatasetError(f"{self.path} holds no drawings; expected {self.name}/{LAYOUT}")
            self._members = sorted("/".join(parts) for parts in pngs)
        return self._members

    def describe(self, member: str) -> str:
        """Where a drawing lives, for error messages."""
        if self.is_zip:
            return f"{self.path}:{self.name}/{member}"
        return str(self.path / member)

    def read(self, member: str) -> bytes:
        try:
            if self.is_zip:
                return self._open_zip().read(f"{self.name}/{member}")
            return (self.path / member).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise DatasetError(f"cannot read {self.describe(member)}: corrupt or truncated archive ({err})") from err

    def fingerprint(self) -> str:
        """sha256 of the zip file, or of the folder's sorted relative paths and sizes."""
        digest = hashlib.sha256()
        if self.is_zip:
            try:
                with open(self.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            except OSError as err:
                raise DatasetError(f"cannot read {self.path} ({err})") from err
        else:
            for member in self.members():
                digest.update(f"{member}\t{(self.path / member).stat().st_size}\n".encode())
        return digest.hexdigest()


def _locate(root: Path, name: str) -> Archive | None:
    """The zip is preferred to a folder of the same name: it is what the cache key can hash."""
    if (root / f"{name}.zip").is_file():
        return Archive(name, root / f"{name}.zip")
    if (root / name).is_dir():
        return Archive(name, root / name)
    return None


def find_archives(root: str | Path) -> tuple[Source, list[Archive]]:
    """The full set if both of its archives are present, else whichever small sets are."""
    root = Path(root).expanduser()
    expected = (f"{FULL[0]}.zip and {FULL[1]}.zip (full set) or {SMALL[0]}.zip and/or {SMALL[1]}.zip "
                f"(small sets), as zips or as extracted folders of the same names")
    if not root.is_dir():
        raise DatasetError(f"Omniglot root {root} is not a directory; expected a directory holding {expected}")
    found = {name: _locate(root, name) for name in FULL + SMALL}
    full = [found[n] for n in FULL]
    if all(full):
        return "full", full  # type: ignore[return-value]
    small = [a for a in (found[n] for n in SMALL) if a is not None]
    if small:
        return "small", small
    partial = [a.path.name for a in full if a is not None]
    hint = f"; found only {partial[0]}, the full set needs both" if partial else ""
    raise DatasetError(f"no Omniglot archives in {root}: expected {expected}{hint}")


@dataclass(frozen=True)
class Character:
    alphabet: str
    name: str  # e.g. character05
    archive: Archive
    drawings: tuple[str, ...]  # members, sorted by file name

    @property
    def full_name(self) -> str:
        return f"{self.alphabet}/{self.name}"


def characters(source: Source, archives: list[Archive]) -> list[Character]:
    """Every (alphabet, character) once, in the order the splits rely on.

    Full set: background alphabets sorted, then evaluation alphabets sorted (the order of
    Vinyals et al.). Small sets: all alphabets sorted together. An alphabet found in two
    archives (Greek and Latin are in both small sets) is kept once, after checking its
    files are byte-identical; differing copies are an error, not a silent choice.
    """
    seen: dict[tuple[str, str], Character] = {}
    for archive in archives:
        grouped: dict[tuple[str, str], list[str]] = {}
        for member in archive.members():
            alphabet, character, _ = member.split("/")
            grouped.setdefault((alphabet, character), []).append(member)
        for key in sorted(grouped):
            drawings = tuple(sorted(grouped[key], key=lambda m: m.rsplit("/", 1)[1]))
            if len(drawings) != DRAWINGS:
                raise DatasetError(f"{archive.describe(key[0] + '/' + key[1])}: expected {DRAWINGS} drawings per "
                                   f"character, found {len(drawings)}")
            if key in seen:
                _check_same(seen[key], archive, drawings)
                continue
            seen[key] = Character(key[0], key[1], archive, drawings)
    chars = list(seen.values())
    if source == "small":
        chars.sort(key=lambda c: (c.alphabet, c.name))
    return chars


def _check_same(first: Character, archive: Archive, drawings: tuple[str, ...]) -> None:
    names = [d.rsplit("/", 1)[1] for d in drawings]
    if names != [d.rsplit("/", 1)[1] for d in first.drawings]:
        raise DatasetError(f"{first.full_name} is in both {first.archive.path} and {archive.path} with different "
                           f"drawing files; expected identical copies")
    for mine, theirs in zip(first.drawings, drawings):
        if first.archive.read(mine) != archive.read(theirs):
            raise DatasetError(f"{archive.describe(theirs)} differs from {first.archive.describe(mine)}; "
                               f"expected identical copies of an alphabet found in two archives")
