"""Synthetic click-through data from a fixed random "teacher", at the true Criteo Kaggle table sizes.

Nothing of table size is ever materialised: a teacher embedding row is computed on demand, from a
hash of ``(table, id, coordinate)`` or from small TT cores, so the generator needs a few kilobytes
(hashed) or a few hundred kilobytes (TT) whatever the cardinalities, while a dense student model of
the same tables would need ~4.3e9 parameters at embedding dimension 128.

Generative model (for one row)
------------------------------
* **Categorical ids.** For table ``t`` of size ``C_t``, a popularity rank ``k`` is drawn from a
  bounded power law (continuous Zipf, ``P(k) ∝ (k + 1)^-s`` on ``[0, C_t)``, ``s`` =
  ``zipf_exponent``), then mapped to an id by a fixed random affine permutation
  ``id = (a_t k + b_t) mod C_t`` with ``gcd(a_t, C_t) = 1``, so popular ids are scattered over the
  table as in real hashed data.
* **Dense features.** 13 counts ``floor(exp(N(μ_j, σ_j²)))`` (a fraction ``p_j`` of them missing,
  i.e. 0), then DLRM's ``log(1 + x)``.
* **Teacher.** Each categorical value gets a ``teacher_rank``-dimensional vector ``e_t(id)`` with
  zero-mean, unit-variance coordinates, of one of two kinds (``teacher``):

  - ``"hashed"``: independent hashed uniform features per id. The tables have no structure a
    low-rank student could find, only what it can memorise of the popular ids.
  - ``"tt"``: a planted tensor train. With ``id`` written in mixed radix over
    ``tensorized_shape(C_t, teacher_modes)`` (the row shape a tensorized student table uses),
    ``e_t(id) = G_1[:, v_1, :] G_2[:, v_2, :] ⋯ G_d[:, v_d, :]``, cores ``(R, n_k, R)`` with
    ``R = teacher_tt_rank`` (``1`` on the left, ``teacher_rank`` on the right) and Gaussian
    entries of variance ``1 / r_{k-1}``. Each table is then exactly a TT of ranks
    ``(R, …, R, teacher_rank)``: ground truth for rank determination.

  The dense features get
  ``v_0 = W (d - m) / s`` with a fixed Gaussian ``W``. With ``V = [v_0, e_1, …, e_26]``, the
  logit is ``bias + α/√27 Σ_t ⟨w_t, v_t⟩ + β/√(351 r) Σ_{s<t} ⟨v_s, v_t⟩`` — first-order terms
  plus DLRM-style pairwise dot interactions — and the label is ``Bernoulli(sigmoid(logit))``. The
  dense input is standardised and ``bias`` solved for the requested click rate (default Criteo's
  25.6%) on a fixed calibration sample.

Everything is a pure function of ``(seed, split, batch index)``: batch ``i`` is the same however
(and in whichever order, or in whichever process) it is generated. ``"train"`` and ``"test"`` share
the teacher but draw their rows from disjoint random streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..formats import tensorized_shape
from .click_batch import NUM_DENSE, NUM_SPARSE, ClickBatch
from .criteo import KAGGLE_CARDINALITIES, check_cardinalities

_SPLIT_STREAM = {"train": 0, "test": 1, "validation": 2}
TEACHERS = ("hashed", "tt")
_TEACHER_STREAM = 0x7EAC4E12
_CALIBRATION_ROWS = 4096


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on ``uint64`` (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _solve_bias(logits: torch.Tensor, click_rate: float) -> float:
    """The offset ``c`` with ``mean(sigmoid(logits + c)) = click_rate`` (bisection; the mean is monotone in ``c``)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(logits + mid).mean()) < click_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _coprime_multiplier(rng: np.random.Generator, n: int) -> int:
    """A random multiplier in ``[1, n)`` coprime to ``n`` (1 when ``n <= 2``)."""
    if n <= 2:
        return 1
    a = int(rng.integers(1, n))
    while math.gcd(a, n) != 1:
        a = a % (n - 1) + 1
    return a


class SyntheticClicks:
    """Deterministic synthetic click batches in the Criteo/DLRM format (see the module docstring).

    Parameters
    ----------
    num_batches
        Batches per iteration (one "epoch").
    batch_size
        Rows per batch.
    seed
        Fixes the teacher and the data; same seed, same everything.
    split
        ``"train"``, ``"test"`` or ``"validation"``: same teacher, independent rows.
    cardinalities
        Sizes of the 26 tables; default :data:`~bayestensor.data.criteo.KAGGLE_CARDINALITIES`.
    zipf_exponent
        Power-law exponent ``s > 0`` of the id popularity (larger: more concentrated on few ids).
    teacher_rank
        Dimension ``r`` of the teacher's embedding vectors.
    teacher
        ``"hashed"`` (independent features per id) or ``"tt"`` (a planted tensor train per table).
    teacher_tt_rank, teacher_modes
        For ``teacher="tt"``: the TT rank ``R`` between row modes, and the number of row modes.
    first_order, interaction
        Scales ``α`` and ``β`` of the first-order and pairwise parts of the teacher logit.
    click_rate
        Expected fraction of clicks (Criteo Kaggle: 25.6%); the teacher's logit offset is solved for
        it on a fixed calibration sample.
    rank, world_size
        For data-parallel training: this process yields batches ``rank, rank + world_size, …``.

    Examples
    --------
    >>> data = SyntheticClicks(num_batches=10, batch_size=512, seed=0)
    >>> dense, sparse, label = data.batch(3)
    >>> dense.shape, sparse.shape, label.shape
    (torch.Size([512, 13]), torch.Size([512, 26]), torch.Size([512]))
    """

    def __init__(
        self,
        num_batches: int,
        batch_size: int = 2048,
        *,
        seed: int = 0,
        split: str = "train",
        cardinalities: Sequence[int] = KAGGLE_CARDINALITIES,
        zipf_exponent: float = 1.05,
        teacher_rank: int = 8,
        teacher: str = "hashed",
        teacher_tt_rank: int = 4,
        teacher_modes: int = 3,
        first_order: float = 1.0,
        interaction: float = 1.0,
        click_rate: float = 0.256,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_batches < 0 or batch_size < 1:
            raise ValueError(f"expected num_batches >= 0 and batch_size >= 1, got {num_batches} and {batch_size}")
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be one of {tuple(_SPLIT_STREAM)}, got {split!r}")
        if not zipf_exponent > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
        if teacher_rank < 1:
            raise ValueError(f"teacher_rank must be >= 1, got {teacher_rank}")
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
        if teacher_tt_rank < 1 or teacher_modes < 1:
            raise ValueError(
                f"expected teacher_tt_rank >= 1 and teacher_modes >= 1, got {teacher_tt_rank} and {teacher_modes}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if not 0.0 < click_rate < 1.0:
            raise ValueError(f"click_rate must be in (0, 1), got {click_rate}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_batches = int(num_batches)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.split = split
        self.cardinalities = check_cardinalities(cardinalities)
        self.zipf_exponent = float(zipf_exponent)
        self.teacher_rank = int(teacher_rank)
        self.teacher = teacher
        self.teacher_tt_rank = int(teacher_tt_rank)
        self.teacher_modes = int(teacher_modes)
        self.first_order = float(first_order)
        self.interaction = float(interaction)
        self.click_rate = float(click_rate)
        self.rank = rank
        self.world_size = world_size

        # The teacher: everything below is O(26 r + 13 r) numbers, fixed by the seed alone.
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TEACHER_STREAM]))
        r = self.teacher_rank
        self._hash_key = np.uint64(int(rng.integers(0, 2**63)))
        self._perm_a = np.array([_coprime_multiplier(rng, c) for c in self.cardinalities], dtype=np.int64)
        self._perm_b = np.array([int(rng.integers(0, c)) for c in self.cardinalities], dtype=np.int64)
        self._dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
        self._dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self._dense_missing = rng.uniform(0.0, 0.45, NUM_DENSE)
        self._dense_w = rng.normal(0.0, 1.0 / math.sqrt(NUM_DENSE), (NUM_DENSE, r))
        self._first_w = rng.normal(0.0, 1.0 / math.sqrt(r), (1 + NUM_SPARSE, r))
        # TT cores from their own stream, so the hashed teacher's draws stay as they were
        self._tt_shapes: list[tuple[int, ...]] = []
        self._tt_cores: list[list[np.ndarray]] = []
        if teacher == "tt":
            tt_rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TEACHER_STREAM, 2]))
            for c in self.cardinalities:
                shape = tensorized_shape(c, self.teacher_modes)
                ranks = [1] + [self.teacher_tt_rank] * (len(shape) - 1) + [r]
                self._tt_shapes.append(shape)
                cores = [
                    tt_rng.normal(0.0, 1.0 / math.sqrt(ranks[k]), (ranks[k], n, ranks[k + 1]))
                    for k, n in enumerate(shape)
                ]
                self._tt_cores.append([np.ascontiguousarray(g.transpose(1, 0, 2)) for g in cores])  # (n_k, r, r')
        # Standardise the teacher's dense input and set its bias to hit `click_rate`, both from a
        # calibration sample drawn from its own stream, so the teacher stays a pure function of the seed.
        self._dense_m = np.zeros(NUM_DENSE)
        self._dense_s = np.ones(NUM_DENSE)
        self.bias = 0.0
        cal = np.random.default_rng(np.random.SeedSequence([self.seed, _TEACHER_STREAM, 1]))
        cal_dense = self._sample_dense(cal, _CALIBRATION_ROWS).astype(np.float64)
        self._dense_m = cal_dense.mean(axis=0)
        self._dense_s = np.maximum(cal_dense.std(axis=0), 1e-6)
        base = self.teacher_logits(cal_dense, self._sample_ids(cal, _CALIBRATION_ROWS)).double()
        self.bias = _solve_bias(base, click_rate)

    # ------------------------------------------------------------------ generation
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_STREAM[self.split], index]))

    def _sample_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cards = np.asarray(self.cardinalities, dtype=np.float64)
        u = rng.random((n, NUM_SPARSE))
        s = self.zipf_exponent
        if abs(s - 1.0) < 1e-9:
            x = np.exp(u * np.log(cards + 1.0))
        else:
            top = (cards + 1.0) ** (1.0 - s)
            x = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - s))
        k = np.minimum(np.floor(x).astype(np.int64) - 1, np.asarray(self.cardinalities) - 1)
        k = np.maximum(k, 0)
        return (self._perm_a * k + self._perm_b) % np.asarray(self.cardinalities, dtype=np.int64)

    def _sample_dense(self, rng: np.random.Generator, n: int) -> np.ndarray:
        z = rng.normal(self._dense_mu, self._dense_sigma, (n, NUM_DENSE))
        counts = np.floor(np.exp(z))
        counts[rng.random((n, NUM_DENSE)) < self._dense_missing] = 0.0
        return np.log1p(counts).astype(np.float32)

    def teacher_embedding(self, sparse: torch.Tensor | np.ndarray) -> np.ndarray:
        """The teacher's vectors ``e_t(id)`` for ids ``sparse`` ``(B, 26)``: ``float64`` ``(B, 26, r)``.

        ``"hashed"``: from a hash of ``(seed, table, id, coordinate)``, uniform on ``[-√3, √3)``.
        ``"tt"``: the product of the TT cores' slices at the id's mixed-radix digits.
        """
        if self.teacher == "tt":
            return self._tt_embedding(np.asarray(sparse, dtype=np.int64))
        ids = np.asarray(sparse, dtype=np.int64).astype(np.uint64)
        r = self.teacher_rank
        table = np.arange(NUM_SPARSE, dtype=np.uint64)[:, None] * np.uint64(r) + np.arange(r, dtype=np.uint64)
        key = _splitmix64(ids[..., None] ^ self._hash_key) ^ _splitmix64(table + np.uint64(0x5851F42D4C957F2D))
        bits = _splitmix64(key) >> np.uint64(11)
        u = bits.astype(np.float64) * (1.0 / 2.0**53)
        return (u * 2.0 - 1.0) * math.sqrt(3.0)

    def _tt_embedding(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((*ids.shape, self.teacher_rank))
        for t, (shape, cores) in enumerate(zip(self._tt_shapes, self._tt_cores, strict=True)):
            rem, digits = ids[..., t], []
            for n in reversed(shape):  # mixed radix, last mode fastest (as TensorizedEmbedding)
                digits.append(rem % n)
                rem = rem // n
            digits.reverse()
            v = cores[0][digits[0]]  # (..., 1, R)
            for core, d in zip(cores[1:], digits[1:], strict=True):
                v = np.matmul(v, core[d])  # (..., 1, R) @ (..., R, R') -> (..., 1, R')
            out[..., t, :] = v[..., 0, :]
        return out

    def teacher_table(self, table: int) -> np.ndarray:
        """The whole ``(C_t, r)`` teacher table ``t`` (for checks on small tables; materialises it)."""
        ids = np.zeros((self.cardinalities[table], NUM_SPARSE), dtype=np.int64)
        ids[:, table] = np.arange(self.cardinalities[table])
        return self.teacher_embedding(ids)[:, table, :]

    def teacher_logits(self, dense: torch.Tensor | np.ndarray, sparse: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The teacher's click logits for a batch (its sigmoid is the true click probability).

        Useful for the Bayes-optimal reference: a student's AUC or log-loss can be compared with
        the teacher's on the same batch.

        Returns
        -------
        torch.Tensor
            ``float32`` ``(B,)``.
        """
        d = np.asarray(dense, dtype=np.float64)
        v0 = ((d - self._dense_m) / self._dense_s) @ self._dense_w
        v = np.concatenate([v0[:, None, :], self.teacher_embedding(sparse)], axis=1)  # (B, 27, r)
        f = v.shape[1]
        first = np.einsum("bfr,fr->b", v, self._first_w) / math.sqrt(f)
        gram = np.einsum("bfr,bgr->bfg", v, v)
        iu = np.triu_indices(f, k=1)
        pairs = gram[:, iu[0], iu[1]].sum(axis=1) / math.sqrt(len(iu[0]) * self.teacher_rank)
        logits = self.bias + self.first_order * first + self.interaction * pairs
        return torch.from_numpy(logits.astype(np.float32))

    def batch(self, index: int) -> ClickBatch:
        """Batch ``index`` (any non-negative integer; a pure function of seed, split and index)."""
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        rng = self._rng(index)
        n = self.batch_size
        sparse = self._sample_ids(rng, n)
        dense = self._sample_dense(rng, n)
        p = torch.sigmoid(self.teacher_logits(dense, sparse)).numpy()
        label = (rng.random(n) < p).astype(np.float32)
        return ClickBatch(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label))

    # ------------------------------------------------------------------ iteration
    def __len__(self) -> int:
        """Batches this rank yields per iteration."""
        return max(0, (self.num_batches - self.rank + self.world_size - 1) // self.world_size)

    def __iter__(self) -> Iterator[ClickBatch]:
        for i in range(self.rank, self.num_batches, self.world_size):
            yield self.batch(i)

    def __repr__(self) -> str:
        return (
            f"SyntheticClicks(num_batches={self.num_batches}, batch_size={self.batch_size}, seed={self.seed}, "
            f"split={self.split!r}, zipf_exponent={self.zipf_exponent}, teacher={self.teacher!r}, "
            f"teacher_rank={self.teacher_rank})"
        )
