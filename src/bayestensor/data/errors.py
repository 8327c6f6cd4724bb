"""Errors raised by the data loaders: missing files and malformed files.

bayestensor never downloads data. When files are missing, :class:`DataNotFoundError` says which
files were expected in which directory; when a file is present but not in the expected format,
:class:`DataFormatError` names the file (and line, for text formats), what was expected and what was got.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not where they were looked for.

    Parameters
    ----------
    dataset
        Human-readable name of the data set, e.g. ``"Fashion-MNIST"``.
    directory
        The directory that was searched (the first one when several were).
    expected
        The file names that were expected there (alternatives written like ``name[.gz]``).
    missing
        The subset of ``expected`` that was not found; defaults to all of ``expected``.
    searched
        Every directory that was searched, when more than ``directory``.
    hint
        Extra advice appended to the message, e.g. which command-line option sets the directory.

    Attributes
    ----------
    dataset, directory, expected, missing, searched
        As passed in (paths as :class:`~pathlib.Path`).
    """

    def __init__(
        self,
        dataset: str,
        directory: str | Path,
        expected: Sequence[str],
        *,
        missing: Sequence[str] | None = None,
        searched: Sequence[str | Path] | None = None,
        hint: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.directory = Path(directory)
        self.expected = list(expected)
        self.missing = list(expected if missing is None else missing)
        self.searched = [Path(p) for p in (searched or [directory])]
        where = ", ".join(f"'{p}'" for p in self.searched)
        if not self.directory.exists():
            state = f"the directory '{self.directory}' does not exist"
        else:
            state = "missing: " + ", ".join(self.missing)
        message = (
            f"{dataset} data not found in {where}: expected the files {', '.join(self.expected)} ({state}). "
            "bayestensor never downloads data; put the files there or point the loader at the directory "
            "that holds them."
        )
        if hint:
            message += " " + hint
        super().__init__(message)


class DataFormatError(ValueError):
    """A data file exists but its contents are not in the expected format.

    Parameters
    ----------
    path
        The offending file.
    message
        What was expected and what was found.
    line
        1-based line number for text formats, if known.

    Attributes
    ----------
    path, line
        As passed in.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"'{self.path}'" if line is None else f"'{self.path}', line {line}"
        super().__init__(f"{where}: {message}")
