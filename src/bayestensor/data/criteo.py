"""A streaming reader for the Criteo Kaggle display-advertising ``train.txt``, preprocessed as DLRM does.

File format
-----------
One example per line, 40 tab-separated fields: the label (``0``/``1``), 13 integer features
``I1 … I13`` and 26 categorical features ``C1 … C26`` written as 8-digit hexadecimal hashes. Any
feature field may be empty.

Preprocessing (as in DLRM's ``data_utils.py``)
----------------------------------------------
* dense: ``log(1 + max(x, 0))``, a missing value counting as 0;
* categorical: the hex string parsed as an integer (missing → 0), then reduced modulo the
  table's cardinality, ``id = int(hex, 16) % cardinalities[t]`` — DLRM's ``--max-ind-range``
  hashing with a per-table range. With :data:`KAGGLE_CARDINALITIES` every table has the size
  DLRM's reference builds for Kaggle, but ids are hashed rather than remapped through a
  vocabulary (no pass over the whole file is needed), so distinct values can collide.

Train/test split
----------------
DLRM splits Kaggle's ``train.txt`` (seven consecutive days in time order) into seven equal
consecutive "days" by line count and holds out the last one. We do the same over the *window*
of the first ``max_rows`` lines (the whole file when ``max_rows`` is ``None``): with ``n`` lines in
the window, the last ``n // 7`` lines are the test split and the first ``n - n // 7`` the train
split. The split therefore depends only on line numbers and ``max_rows``; it is temporal (the
test rows come after all training rows), like DLRM's. DLRM further halves its held-out day into
validation and test; here the whole held-out part is ``"test"``. Batches come in file order.

Speed
-----
Well-formed batches are parsed with vectorised NumPy (about 1.5e5 rows/s on one core); any batch
the fast path declines is re-parsed line by line, which gives the same result or pinpoints the
malformed line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ._files import find_files, open_binary, reading
from .click_batch import NUM_DENSE, NUM_SPARSE, ClickBatch
from .errors import DataFormatError

#: Rows of the 26 embedding tables for Criteo Kaggle, as built by DLRM's reference implementation
#: (``ln_emb`` for ``--data-set=kaggle``); 33,762,577 rows in total.
KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

#: Data lines of the Kaggle ``train.txt``.
KAGGLE_ROWS = 45_840_617

#: The name of the Kaggle training file (optionally ``.gz``).
CRITEO_FILE = "train.txt"
#: DLRM divides the file into this many consecutive "days" and holds out the last.
NUM_DAYS = 7
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
FIELD_NAMES: tuple[str, ...] = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))
SPLITS = ("train", "test", "all")


def check_cardinalities(cardinalities: Sequence[int]) -> tuple[int, ...]:
    """Validate 26 positive table sizes and return them as a tuple of ints."""
    cards = tuple(int(c) for c in cardinalities)
    if len(cards) != NUM_SPARSE or min(cards) < 1:
        raise ValueError(f"expected {NUM_SPARSE} positive table cardinalities, got {list(cardinalities)}")
    return cards


def split_bounds(window_rows: int, split: str) -> tuple[int, int]:
    """Half-open range of 0-based data-line indices of ``split`` in a window of ``window_rows`` lines.

    ``"test"`` is the last ``window_rows // 7`` lines, ``"train"`` the lines before them, ``"all"`` everything.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    boundary = window_rows - window_rows // NUM_DAYS
    return {"train": (0, boundary), "test": (boundary, window_rows), "all": (0, window_rows)}[split]


def _count_lines(path: Path, limit: int | None) -> int:
    """Number of lines in ``path`` (a last line without newline counts), or ``limit`` if there are more."""
    count = 0
    last = b"\n"
    with reading(path), open_binary(path) as f:
        while chunk := f.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
            if limit is not None and count >= limit:
                return limit
    count += last != b"\n"
    return count if limit is None else min(count, limit)


def _int(x: bytes, base: int = 10) -> int:
    """``int(x, base)`` without digit-group underscores (``1_000``), which would silently join two numbers.

    A sign or a ``0x`` prefix is still read as Python reads it (the vectorised path declines such
    lines and they come here).
    """
    if b"_" in x:
        raise ValueError(x)
    return int(x, base)


def _bad_field(fields: list[bytes]) -> tuple[int, str]:
    """Index of the first invalid field of a 40-field line, and what was wrong with it."""
    if fields[0] not in (b"0", b"1"):
        return 0, "expected 0 or 1"
    for i in range(1, NUM_FIELDS):
        x = fields[i]
        if not x:
            continue
        try:
            _int(x) if i <= NUM_DENSE else _int(x, 16)
        except ValueError:
            return i, "expected an integer or an empty field" if i <= NUM_DENSE else "expected hexadecimal or empty"
    return 0, "expected a valid line"  # pragma: no cover - only reached if parsing failed for another reason


_HEX_LUT = np.full(256, 255, dtype=np.int64)
_HEX_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_LUT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_LUT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_DEC_LUT = np.full(256, 255, dtype=np.int64)
_DEC_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_MAX_DIGITS = {10: 18, 16: 15}  # digits that surely fit in int64


def _digits_to_int(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, base: int) -> np.ndarray | None:
    """Parse the fields ``buf[starts:starts+lengths]`` as unsigned integers in ``base``; ``None`` if any is invalid."""
    width = int(lengths.max(initial=0))
    if width > _MAX_DIGITS[base]:
        return None
    lut = _HEX_LUT if base == 16 else _DEC_LUT
    values = np.zeros(starts.shape, dtype=np.int64)
    last = buf.size - 1
    for j in range(width):
        inside = j < lengths
        digit = lut[buf[np.minimum(starts + j, last)]]
        if (digit[inside] == 255).any():
            return None
        values = np.where(inside, values * base + digit, values)
    return values


def _parse_fast(lines: Sequence[bytes], cards: tuple[int, ...]) -> ClickBatch | None:
    """Vectorised parse of well-formed lines; ``None`` when anything is unusual (the slow path then decides).

    The lines are joined with tabs into one byte buffer whose field boundaries are found at once;
    fields are parsed digit by digit across all rows. Only plain ``[-]digits`` integers and
    ``hexdigits`` categories are accepted here.
    """
    n = len(lines)
    joined = b"\t".join([line.rstrip(b"\r\n") for line in lines]) + b"\t"
    buf = np.frombuffer(joined, dtype=np.uint8)
    ends = np.flatnonzero(buf == 9)
    if ends.size != n * NUM_FIELDS:
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    starts = starts.reshape(n, NUM_FIELDS)
    lengths = ends.reshape(n, NUM_FIELDS) - starts
    # A line with too few fields and one with too many could balance out: check the line boundaries.
    line_lengths = np.fromiter((len(line.rstrip(b"\r\n")) for line in lines), dtype=np.int64, count=n)
    if not np.array_equal(ends.reshape(n, NUM_FIELDS)[:, -1] - starts[:, 0], line_lengths):
        return None
    if (lengths[:, 0] != 1).any():
        return None
    label = buf[starts[:, 0]].astype(np.int64) - ord("0")
    if ((label != 0) & (label != 1)).any():
        return None
    d_start, d_len = starts[:, 1 : 1 + NUM_DENSE], lengths[:, 1 : 1 + NUM_DENSE]
    negative = (d_len > 0) & (buf[np.minimum(d_start, buf.size - 1)] == ord("-"))
    if (negative & (d_len == 1)).any():
        return None
    dense = _digits_to_int(buf, d_start + negative, d_len - negative, 10)
    sparse = _digits_to_int(buf, starts[:, 1 + NUM_DENSE :], lengths[:, 1 + NUM_DENSE :], 16)
    if dense is None or sparse is None:
        return None
    dense = np.where(negative, 0, dense)  # log(1 + max(x, 0))
    sparse %= np.asarray(cards, dtype=np.int64)
    return ClickBatch(
        torch.from_numpy(np.log1p(dense.astype(np.float64)).astype(np.float32)),
        torch.from_numpy(sparse),
        torch.from_numpy(label.astype(np.float32)),
    )


def parse_lines(
    lines: Sequence[bytes], cardinalities: Sequence[int], *, path: str | Path = "<lines>", first_line: int = 1
) -> ClickBatch:
    """Parse raw Criteo TSV lines into a :class:`ClickBatch` with DLRM's preprocessing.

    Parameters
    ----------
    lines
        Raw lines (bytes, with or without the trailing newline).
    cardinalities
        The 26 table sizes that categorical ids are reduced modulo.
    path, first_line
        Used in error messages: the file and the 1-based line number of ``lines[0]``.

    Raises
    ------
    DataFormatError
        A line does not have 40 tab-separated fields, a label is not 0/1, an integer feature is not
        an integer or a categorical feature is not hexadecimal. The message names the line number,
        the field and the value.
    """
    cards = check_cardinalities(cardinalities)
    if lines:
        fast = _parse_fast(lines, cards)
        if fast is not None:
            return fast
    labels: list[float] = []
    dense: list[list[int]] = []
    sparse: list[list[int]] = []
    for r, line in enumerate(lines):
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) != NUM_FIELDS:
            raise DataFormatError(
                path,
                f"expected {NUM_FIELDS} tab-separated fields (label, 13 integer features I1-I13, 26 hexadecimal "
                f"features C1-C26; empty fields allowed), got {len(fields)} fields",
                line=first_line + r,
            )
        lab = fields[0]
        try:
            if lab != b"0" and lab != b"1":
                raise ValueError(lab)
            dense.append([_int(x) if x else 0 for x in fields[1 : 1 + NUM_DENSE]])
            sparse.append([_int(x, 16) % c if x else 0 for x, c in zip(fields[1 + NUM_DENSE :], cards, strict=True)])
        except ValueError:
            i, what = _bad_field(fields)
            got = fields[i].decode("utf-8", errors="replace")
            raise DataFormatError(
                path, f"field {i + 1} ({FIELD_NAMES[i]}): {what}, got {got!r}", line=first_line + r
            ) from None
        labels.append(1.0 if lab == b"1" else 0.0)
    n = len(labels)
    dense_np = np.asarray(dense, dtype=np.float64).reshape(n, NUM_DENSE)
    dense_np = np.log1p(np.maximum(dense_np, 0.0)).astype(np.float32)
    sparse_np = np.asarray(sparse, dtype=np.int64).reshape(n, NUM_SPARSE)
    return ClickBatch(
        torch.from_numpy(dense_np), torch.from_numpy(sparse_np), torch.tensor(labels, dtype=torch.float32)
    )


def find_criteo_file(data_dir: str | Path) -> Path:
    """The Kaggle ``train.txt`` (or ``train.txt.gz``): ``data_dir`` itself if it is a file, else inside it.

    Raises
    ------
    DataNotFoundError
        ``data_dir`` is neither the file nor a directory holding it.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.is_file():
        return data_dir
    return find_files(
        "Criteo Kaggle",
        data_dir,
        [CRITEO_FILE],
        hint="Get train.txt from the Criteo Kaggle display-advertising challenge (dac.tar.gz) and extract it there.",
    )[CRITEO_FILE]


class CriteoKaggle:
    """Stream mini-batches of the Criteo Kaggle ``train.txt``, preprocessed as DLRM does.

    The object is re-iterable: each ``iter()`` reopens the file and yields the same batches in
    the same (file) order, so it can serve one epoch per iteration. See the module docstring for
    the preprocessing, the hashing and the train/test split.

    Parameters
    ----------
    data_dir
        Directory holding ``train.txt`` or ``train.txt.gz``, or the file itself.
    batch_size
        Rows per batch.
    split
        ``"train"``, ``"test"`` (the last seventh of the window) or ``"all"``.
    max_rows
        Only the first ``max_rows`` lines of the file form the window that is split and read;
        ``None`` for the whole file (then the file is scanned once to count its lines).
    cardinalities
        The 26 table sizes used for hashing; defaults to :data:`KAGGLE_CARDINALITIES`.
    drop_last
        Drop a final batch smaller than ``batch_size``.
    rank, world_size
        For data-parallel training: this process yields batches ``rank, rank + world_size, …`` of
        the split (the others are read but not parsed). Ranks may then get one batch more or less
        than each other; use ``drop_last`` and ``len()`` to keep them in step.

    Raises
    ------
    DataNotFoundError
        No ``train.txt`` where it was looked for (nothing is downloaded).
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 2048,
        *,
        split: str = "train",
        max_rows: int | None = None,
        cardinalities: Sequence[int] = KAGGLE_CARDINALITIES,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 or None, got {max_rows}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.path = find_criteo_file(data_dir)
        self.batch_size = int(batch_size)
        self.split = split
        self.max_rows = max_rows
        self.cardinalities = check_cardinalities(cardinalities)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self._window: int | None = None

    @property
    def window_rows(self) -> int:
        """Lines in the window: ``min(max_rows, lines in the file)`` (counted once, on first use)."""
        if self._window is None:
            self._window = _count_lines(self.path, self.max_rows)
        return self._window

    @property
    def bounds(self) -> tuple[int, int]:
        """Half-open range of 0-based line indices of this split."""
        return split_bounds(self.window_rows, self.split)

    @property
    def num_rows(self) -> int:
        """Rows in this split (all ranks together)."""
        start, stop = self.bounds
        return stop - start

    def _num_batches_total(self) -> int:
        n = self.num_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields per iteration."""
        total = self._num_batches_total()
        return max(0, (total - self.rank + self.world_size - 1) // self.world_size)

    def __iter__(self) -> Iterator[ClickBatch]:
        start, stop = self.bounds
        num_batches = self._num_batches_total()
        with reading(self.path), open_binary(self.path) as f:
            lines = itertools.islice(f, start, stop)
            for b in range(num_batches):
                chunk = list(itertools.islice(lines, self.batch_size))
                if b % self.world_size != self.rank:
                    continue
                if len(chunk) < min(self.batch_size, stop - start - b * self.batch_size):
                    raise DataFormatError(self.path, f"expected {stop} lines, the file ended early (did it change?)")
                yield parse_lines(chunk, self.cardinalities, path=self.path, first_line=start + b * self.batch_size + 1)

    def __repr__(self) -> str:
        return (
            f"CriteoKaggle('{self.path}', batch_size={self.batch_size}, split={self.split!r}, "
            f"max_rows={self.max_rows}, rank={self.rank}, world_size={self.world_size})"
        )
