"""Finding data files that may be gzip-compressed or sit in one of a few conventional subfolders, and opening them."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import DataFormatError, DataNotFoundError


def find_files(
    dataset: str,
    directory: str | Path,
    names: Sequence[str],
    *,
    subdirs: Sequence[str] = (),
    allow_gzip: bool = True,
    hint: str | None = None,
) -> dict[str, Path]:
    """Locate every file of ``names`` in ``directory`` or one of its ``subdirs``.

    A file may be present as ``name`` or, when ``allow_gzip``, as ``name.gz`` (the raw file wins when
    both exist). All files must come from the same directory; the first directory (``directory``
    itself, then ``subdirs`` in order) holding all of them is used.

    Returns
    -------
    dict
        ``name -> path`` for every name in ``names``.

    Raises
    ------
    DataNotFoundError
        No searched directory holds all the files; the message lists the expected names and, for
        the directory that holds most of them, which are missing.
    """
    directory = Path(directory).expanduser()
    candidates = [directory] + [directory / s for s in subdirs]
    best_missing: list[str] | None = None
    best_dir = directory
    for d in candidates:
        found: dict[str, Path] = {}
        missing: list[str] = []
        for name in names:
            for fname in (name, name + ".gz") if allow_gzip else (name,):
                if (d / fname).is_file():
                    found[name] = d / fname
                    break
            else:
                missing.append(name)
        if not missing:
            return found
        if d.is_dir() and (best_missing is None or len(missing) < len(best_missing)):
            best_missing, best_dir = missing, d
    suffix = "[.gz]" if allow_gzip else ""
    expected = [n + suffix for n in names]
    missing_names = [n + suffix for n in (best_missing if best_missing is not None else names)]
    raise DataNotFoundError(
        dataset,
        best_dir,
        expected,
        missing=missing_names,
        searched=[d for d in candidates if d == directory or d.is_dir()],
        hint=hint,
    )


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (the file name is not consulted)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing on the fly when it is gzip."""
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a damaged or truncated gzip stream met while reading ``path`` into a :class:`DataFormatError`."""
    try:
        yield
    except (EOFError, OSError, zlib.error) as e:
        raise DataFormatError(path, f"expected a complete gzip stream, got a damaged or truncated one ({e})") from e
