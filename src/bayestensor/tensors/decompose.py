r"""Dense tensor → factors in each format, with ``torch.linalg`` (no TensorLy at run time).

All functions take the tensor ``T`` of shape ``(*out_shape, *in_shape)`` (the layers' view of a
weight matrix) and return factors in the layouts of :mod:`bayestensor.formats`:

* **TT-SVD** (Oseledets 2011): sweep left to right, ``C ← reshape(C, r_{k-1} n_k, ·)``,
  ``C = U Σ Vᵀ``, core ``k = U[:, :r_k]``, ``C ← Σ Vᵀ``. Exact when no rank is cut; otherwise the
  error is at most ``sqrt(Σ_k ε_k²)`` with ``ε_k`` the discarded singular values of step ``k``.
* **TTM-SVD**: TT-SVD of ``T`` with modes regrouped as ``(m_1 n_1, m_2 n_2, …)``.
* **HOSVD / HOOI** (De Lathauwer et al. 2000) for Tucker: ``U_n`` = leading left singular
  vectors of the mode-``n`` unfolding, core ``G = T ×_1 U_1ᵀ ⋯ ×_D U_Dᵀ``; HOOI then refines each
  ``U_n`` from ``T`` projected on the other factors. Exact at full multilinear rank.
* **CP-ALS** (Kolda & Bader 2009): ``U_n ← T_{(n)} (⊙_{k≠n} U_k) (⊛_{k≠n} U_kᵀ U_k)^†``. At the
  format's full rank ``R = Π I / max I`` the exact decomposition that slices ``T`` along its
  largest mode is returned instead (ALS need not converge to an exact fit).

Factors are finally rescaled so that every factor carries an equal share of the norm (the
product, hence ``T̂``, is unchanged); this keeps a warm-started ARD prior well conditioned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..formats import get_format
from ..functional import reconstruct_matrix

Shape = tuple[int, ...]


def _svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.shape[0])
    return u[:, :r], s[:r], vh[:r]


def tt_svd(tensor: Tensor, max_ranks: Sequence[int]) -> list[Tensor]:
    """TT cores ``(r_{k-1}, n_k, r_k)`` of ``tensor`` with ``r_k ≤ max_ranks[k]`` (``d − 1`` entries)."""
    dims = tensor.shape
    if len(max_ranks) != len(dims) - 1:
        raise ValueError(f"a {len(dims)}-way tensor has {len(dims) - 1} TT ranks, got {len(max_ranks)}")
    cores, rest, r_prev = [], tensor, 1
    for k in range(len(dims) - 1):
        u, s, vh = _svd(rest.reshape(r_prev * dims[k], -1), int(max_ranks[k]))
        cores.append(u.reshape(r_prev, dims[k], -1))  # (r_{k-1}, n_k, r_k)
        rest = s[:, None] * vh  # (r_k, n_{k+1} ⋯ n_d)
        r_prev = s.shape[0]
    cores.append(rest.reshape(r_prev, dims[-1], 1))
    return cores


def ttm_svd(tensor: Tensor, out_shape: Shape, in_shape: Shape, max_ranks: Sequence[int]) -> list[Tensor]:
    """TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)`` of ``tensor`` of shape ``(*out_shape, *in_shape)``."""
    d = len(out_shape)
    perm = [p for k in range(d) for p in (k, d + k)]
    paired = tensor.permute(perm).reshape([m * n for m, n in zip(out_shape, in_shape, strict=True)])
    cores = tt_svd(paired, max_ranks)
    return [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(cores, out_shape, in_shape, strict=True)]


def _unfold(tensor: Tensor, mode: int) -> Tensor:
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def _multi_mode(tensor: Tensor, matrices: Sequence[Tensor | None], transpose: bool) -> Tensor:
    """``T ×_n M_n`` over all modes with a matrix (``M_nᵀ`` when ``transpose``)."""
    for n, m in enumerate(matrices):
        if m is None:
            continue
        m = m.T if transpose else m
        tensor = torch.tensordot(m, tensor.movedim(n, 0), dims=1).movedim(0, n)  # mode n: I_n -> R_n
    return tensor


def hooi(tensor: Tensor, ranks: Sequence[int], n_iter: int = 10, tol: float = 1e-10) -> tuple[Tensor, list[Tensor]]:
    """Tucker core ``(R_1..R_D)`` and factors ``(I_n, R_n)``: HOSVD, then HOOI sweeps when truncating."""
    d = tensor.dim()
    factors = [_svd(_unfold(tensor, n), int(ranks[n]))[0] for n in range(d)]
    truncated = any(f.shape[1] < tensor.shape[n] for n, f in enumerate(factors))
    prev = None
    for _ in range(n_iter if truncated else 0):
        for n in range(d):
            proj = _multi_mode(tensor, [None if k == n else factors[k] for k in range(d)], transpose=True)
            factors[n] = _svd(_unfold(proj, n), int(ranks[n]))[0]
        core = _multi_mode(tensor, factors, transpose=True)
        norm = float(core.norm())
        if prev is not None and abs(norm - prev) <= tol * max(norm, 1e-30):
            break
        prev = norm
    return _multi_mode(tensor, factors, transpose=True), factors


def cp_exact(tensor: Tensor) -> list[Tensor]:
    """An exact CP decomposition of rank ``Π I / max I``: one rank-1 term per fibre along the largest mode."""
    dims = tensor.shape
    big = max(range(len(dims)), key=lambda n: dims[n])
    others = [n for n in range(len(dims)) if n != big]
    rank = math.prod(dims[n] for n in others)
    factors = [None] * len(dims)
    factors[big] = tensor.movedim(big, -1).reshape(rank, dims[big]).T.contiguous()  # (I_big, R)
    combos = torch.tensor(list(itertools.product(*(range(dims[n]) for n in others))), dtype=torch.long)
    combos = combos.reshape(rank, len(others))
    for j, n in enumerate(others):
        factors[n] = torch.nn.functional.one_hot(combos[:, j], dims[n]).T.to(tensor)  # (I_n, R)
    return factors


def _solve_gram(rhs: Tensor, gram: Tensor, rtol: float) -> Tensor:
    """``rhs @ gram⁺`` for a symmetric PSD ``gram``: Cholesky when it is well conditioned, else the pseudo-inverse.

    ``κ(G) ≥ max L_ii² / min L_ii²`` for ``G = L Lᵀ``, so a ratio above ``1/√ε`` proves the Cholesky solve
    would amplify round-off past ``√ε`` and the eigendecomposition's pseudo-inverse (relative tolerance
    ``rtol``) is used; a singular Gram (surplus components) always lands there. The eigendecomposition
    is the dearer of the two at large ``R`` (not benchmarked here), hence the Cholesky path.
    """
    chol, info = torch.linalg.cholesky_ex(gram)
    diag = chol.diagonal().square()
    if int(info) == 0 and float(diag.min()) > torch.finfo(gram.dtype).eps ** 0.5 * float(diag.max()):
        return torch.cholesky_solve(rhs.T, chol).T
    return rhs @ torch.linalg.pinv(gram, rtol=rtol, hermitian=True)


def _khatri_rao(mats: Sequence[Tensor]) -> Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[1])  # (Π I, R), last index fastest
    return out


def cp_als(
    tensor: Tensor,
    rank: int,
    n_iter: int = 200,
    tol: float = 1e-9,
    generator: torch.Generator | None = None,
    init: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    r"""CP factors ``(I_n, R)`` by alternating least squares (exact construction at full rank).

    Each sweep solves ``U_n G = T_(n) (⊙_{k≠n} U_k)`` for every mode, with the Gram matrix
    ``G = ∗_{k≠n} U_kᵀ U_k`` (Hadamard product): by Cholesky when ``G`` is well conditioned, else by
    its pseudo-inverse at relative tolerance ``10 R ε`` (:func:`_solve_gram`). Above the tensor's own
    rank ``G`` is singular (the surplus columns become dependent); a QR-based least-squares solve
    there amplifies the round-off in ``G``'s null space until the factors blow up or vanish (a
    rank-2 ``4×4×4×4`` tensor fitted at rank 3 ended at relative error 1.0 after 50 sweeps), while
    the pseudo-inverse stays at the exact fit.

    ``init``: starting factors ``(I_n, R)`` (warm start) instead of the HOSVD start. A mode of
    ``I_n < R`` has only ``I_n`` singular vectors; its other ``R − I_n`` columns start as Gaussian
    columns at the singular vectors' scale (as TensorLy's ``init="svd"`` pads). Started at 1 % of it,
    they never grew: a rank-20 CP tensor on ``(2, 2, 4, 4, 4, 4)`` was fitted to 0.55 relative error.
    """
    dims = tensor.shape
    d = len(dims)
    if init is not None:
        factors = [f.to(tensor) for f in init]
    elif rank >= math.prod(dims) // max(dims):
        factors = cp_exact(tensor)
        extra = rank - factors[0].shape[1]
        return [torch.cat([f, f.new_zeros(f.shape[0], extra)], 1) for f in factors] if extra > 0 else factors
    else:
        factors = []
        for n in range(d):  # HOSVD init; random columns where rank > I_n, at the same scale (docstring)
            u, s, _ = _svd(_unfold(tensor, n), rank)
            u = u * s.clamp_min(1e-12).pow(1.0 / d)
            if u.shape[1] < rank:
                pad = torch.randn(dims[n], rank - u.shape[1], generator=generator, dtype=u.dtype).to(u.device)
                u = torch.cat([u, pad * u.abs().mean()], 1)
            factors.append(u)
    norm = tensor.norm()
    rtol = 10 * rank * torch.finfo(tensor.dtype).eps
    prev = None
    for it in range(n_iter):
        for n in range(d):
            others = [factors[k] for k in range(d) if k != n]
            gram = torch.ones(rank, rank, dtype=tensor.dtype, device=tensor.device)
            for f in others:
                gram = gram * (f.T @ f)  # (R, R)
            mttkrp = _unfold(tensor, n) @ _khatri_rao(others)  # (I_n, R)
            factors[n] = _solve_gram(mttkrp, gram, rtol)  # mttkrp @ gram⁺
        if it % 5:
            continue  # the fit is checked every 5 sweeps
        err = float((_cp_full(factors) - tensor).norm() / norm.clamp_min(1e-30))
        if prev is not None and abs(prev - err) < tol:
            break
        prev = err
    return factors


def _cp_full(factors: Sequence[Tensor]) -> Tensor:
    return _khatri_rao(factors).sum(1).reshape([f.shape[0] for f in factors])


def _balance_components(factors: Sequence[Tensor]) -> list[Tensor]:
    """Rescale every rank-1 term so that each of its vectors has the same norm (the term is unchanged)."""
    scale = [f.norm(dim=0).clamp_min(1e-30) for f in factors]
    geo = torch.stack(scale).log().mean(0).exp()
    return [f * (geo / s) for f, s in zip(factors, scale, strict=True)]


def cp_spread(means: Sequence[Tensor], second_moments: Sequence[Tensor]) -> float:
    r"""``sqrt(E_q‖W − W̄‖²_F) / ‖W̄‖_F`` of a CP tensor whose factor entries are independent under ``q``.

    ``W = Σ_r ∘_n u_{n,r}`` with entries of mean ``μ`` and second moment ``E[u²]`` (shapes ``(I_n, R)``).
    With independent entries ``E[u_{n,r} · u_{n,r'}] = μ_{n,r} · μ_{n,r'} + δ_{rr'} Σ_i var_{n,ir}``, so

    .. math:: E‖W‖² = Σ_{r,r'} Π_n (M_n^T M_n + \mathrm{diag}(Σ_i V_n))_{rr'},\qquad
              E‖W − W̄‖² = E‖W‖² − ‖W̄‖²,\quad ‖W̄‖² = Σ_{r,r'} Π_n (M_n^T M_n)_{rr'}

    (``V_n = E[u²] − μ²``). ``0`` for a point mass; ``inf`` when ``W̄ = 0``.
    """
    means = [m.detach().to(torch.float64) for m in means]
    second = [s.detach().to(torch.float64) for s in second_moments]
    mean_gram = torch.stack([m.T @ m for m in means]).prod(0)
    full_gram = torch.stack([m.T @ m + torch.diag((s - m.square()).clamp_min(0).sum(0))
                             for m, s in zip(means, second, strict=True)]).prod(0)  # fmt: skip
    mean_sq = float(mean_gram.sum())
    if not mean_sq > 0:
        return math.inf
    return math.sqrt(max(float(full_gram.sum()) - mean_sq, 0.0) / mean_sq)


def cp_rank_floor(tensor: Tensor, max_change: float, rank: int | None = None) -> int:
    r"""A lower bound on the fewest CP components within ``max_change`` of ``tensor`` (relative, Frobenius).

    A CP tensor of ``k`` components has every matricization ``T_(S)`` (the modes ``S`` as rows,
    the others as columns) of matrix rank at most ``k``, so by Eckart–Young

    .. math:: \|T - \hat T_k\|_F \;\ge\; \Big(\sum_{i > k} σ_i(T_{(S)})^2\Big)^{1/2}

    for every ``S``. Returns the smallest ``k ≥ 1`` at which this bound is within
    ``max_change · ‖T‖_F`` for each single mode and for one split of the modes in two: the
    narrowest whose smaller side is at least ``2 · rank`` (only ``k < rank`` are asked about, and a
    side of twice that keeps the ``rank``-th singular value of ``rank`` generic terms away from 0;
    the narrowest is the cheapest), else the most balanced. The squared singular values
    are the eigenvalues of the smaller side's Gram matrix in float64, with a margin for their
    round-off.
    """
    t = tensor.detach().to(torch.float64)
    dims = list(t.shape)
    total = math.prod(dims)
    norm2 = float(t.square().sum())
    if not norm2 > 0:
        return 1
    splits = [(n,) for n in range(len(dims))]
    halves = [s for size in range(1, len(dims)) for s in itertools.combinations(range(len(dims)), size) if 0 in s]
    side = {h: min(math.prod(dims[n] for n in h), total // math.prod(dims[n] for n in h)) for h in halves}
    wide = [h for h in halves if rank is not None and side[h] >= 2 * rank]
    if halves:
        splits.append(min(wide, key=side.get) if wide else max(halves, key=side.get))
    floor = 1
    for rows_modes in splits:
        rest = [n for n in range(len(dims)) if n not in rows_modes]
        rows = math.prod(dims[n] for n in rows_modes)
        mat = t.permute(*rows_modes, *rest).reshape(rows, total // rows)
        gram = mat @ mat.T if mat.shape[0] <= mat.shape[1] else mat.T @ mat  # (m, m), m the smaller side
        energies = torch.linalg.eigvalsh(gram).clamp_min(0.0)  # σ_i², ascending
        tails = energies.cumsum(0).flip(0)  # tails[k] = Σ_{i ≥ k} σ_i² (descending order), k = 0 … m-1
        allowed = (max_change**2 + 8 * gram.shape[0] * torch.finfo(torch.float64).eps) * norm2
        within = (tails <= allowed).nonzero()
        floor = max(floor, int(within[0]) if within.numel() else gram.shape[0])
    return floor


def cp_merge(
    factors: Sequence[Tensor], max_change: float, n_iter: int = 100, restarts: int = 0
) -> tuple[list[int], list[Tensor]] | None:
    r"""Fewer CP components for almost the same tensor: the smallest ``k`` whose ALS refit is within ``max_change``.

    CP has no gauge that puts its components in order as the SVD does for a two-factor bond:
    components that are parallel in some modes and cancel in the others (a degenerate fit) can
    carry no more than fewer components would, yet removing any one of them breaks the fit.
    With ``T`` the tensor of ``factors`` (shape ``(I_n, R)``), ``k`` is found by bisection over
    ``k_0 … R-1``, trying ``k_0`` first: ALS fits ``T`` at rank ``k``, and ``k`` is accepted when
    ``‖T̂_k − T‖_F ≤ max_change · ‖T‖_F``. ``k_0`` is :func:`cp_rank_floor`, below which no refit
    can be accepted; when it is ``R`` no ALS runs at all (the usual case of a fit that is not
    degenerate). The fit starts from the ``k`` components of largest norm ``Π_n ‖u_{n,r}‖``; when
    that start misses, from the HOSVD start and then from
    ``restarts`` random ones (seeded, so the result is a function of ``factors``): a degenerate
    fit's largest components are often members of a cancelling group, a poor start from which
    ALS does not leave (a planted rank-2 weight held in 4 such components: 6 % from the largest
    two, 0.03 % from the best of 10 random starts).

    The accepted refit is then refined by ``4 · n_iter`` more ALS sweeps (a loose ``max_change``,
    such as a posterior's spread, accepts a start that has not converged). Returns the indices of
    the ``k`` components the refit replaces (ascending; the largest ``k``) and the refitted factors
    (columns in that order, each term balanced across modes), or ``None`` when no ``k < R`` is
    accepted. Forms ``T``, so it is meant for tensors of modest size.
    """
    rank = factors[0].shape[1]
    if rank < 2:
        return None
    factors = [f.detach().to(torch.float64) for f in factors]
    full = _cp_full(factors)
    norm = full.norm()
    if not norm > 0:
        return None
    lo = cp_rank_floor(full, max_change, rank)
    if lo >= rank:
        return None  # no CP of fewer components is within max_change (Eckart–Young on an unfolding)
    order = torch.stack([f.norm(dim=0) for f in factors]).prod(0).argsort(descending=True)

    def refit(k: int, keep: Tensor) -> list[Tensor] | None:
        gen = torch.Generator().manual_seed(k)
        starts = [[f[:, keep] for f in factors], None]
        starts += [[torch.randn(f.shape[0], k, generator=gen, dtype=f.dtype) for f in factors] for _ in range(restarts)]
        for init in starts:
            fit = cp_als(full, k, n_iter=n_iter, init=init, generator=gen)
            if float((_cp_full(fit) - full).norm() / norm) <= max_change:
                return fit
        return None

    best, hi, k = None, rank, lo  # the floor first: a degenerate fit often has exactly its unfoldings' rank
    while lo < hi:
        keep = order[:k].sort().values
        fit = refit(k, keep)
        if fit is not None:
            best, hi = (keep.tolist(), fit), k
        else:
            lo = k + 1
        k = (lo + hi) // 2
    if best is None:
        return None
    keep, fit = best
    # the first start within max_change is accepted; ALS only lowers the error, so refine it further
    fit = cp_als(full, len(keep), n_iter=4 * n_iter, init=fit)
    return keep, _balance_components(fit)


def _balance(factors: list[Tensor]) -> list[Tensor]:
    norms = [float(f.norm()) for f in factors]
    if any(n == 0.0 for n in norms):
        return factors
    target = math.exp(sum(math.log(n) for n in norms) / len(norms))
    return [f * (target / n) for f, n in zip(factors, norms, strict=True)]


def _pad_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    if tuple(t.shape) == tuple(shape):
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def decompose(
    format: str,
    tensor: Tensor,
    out_shape: Shape,
    in_shape: Shape,
    ranks: Sequence[int],
    *,
    n_iter: int = 200,
) -> list[Tensor]:
    """Factors of ``tensor`` (shape ``(*out_shape, *in_shape)``) in ``format`` at exactly ``ranks``.

    Ranks the decomposition cannot use (e.g. a TT rank above what the SVD yields) are
    zero-padded, so the factors always fit a :class:`~bayestensor.tensors.FactorizedTensor`
    built with the same ranks.
    """
    fmt = get_format(format)
    out_shape, in_shape = tuple(out_shape), tuple(in_shape)
    if tuple(tensor.shape) != out_shape + in_shape:
        raise ValueError(f"expected a tensor of shape {out_shape + in_shape}, got {tuple(tensor.shape)}")
    ranks = list(ranks)
    if fmt.name == "tt":
        factors = _balance(tt_svd(tensor, ranks))
    elif fmt.name == "ttm":
        factors = _balance(ttm_svd(tensor, out_shape, in_shape, ranks))
    elif fmt.name == "tucker":
        core, us = hooi(tensor, ranks, n_iter=min(n_iter, 25))
        factors = _balance([core, *us])
    elif fmt.name == "cp":
        factors = _balance_components(cp_als(tensor, ranks[0], n_iter=n_iter))
    else:
        raise ValueError(f"no decomposition for format {fmt.name!r}")
    shapes = fmt.factor_shapes(out_shape, in_shape, ranks)
    return [_pad_to(f, s) for f, s in zip(factors, shapes, strict=True)]


def relative_error(
    format: str, factors: Sequence[Tensor], tensor: Tensor, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]
) -> float:
    """``‖T − T̂‖_F / ‖T‖_F`` of the reconstruction (0 when ``T`` is zero and so is ``T̂``)."""
    approx = reconstruct_matrix(format, list(factors), tuple(out_shape), tuple(in_shape), tuple(ranks))
    diff = (approx - tensor.reshape(approx.shape)).norm()
    norm = tensor.norm()
    return float(diff / norm) if float(norm) > 0 else float(diff)
