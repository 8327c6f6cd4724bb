"""What a rank index carries across its bond, against dense reconstructions of the weight and of each side."""

import pytest
import torch

import bayestensor as bt
from bayestensor.tensors import FactorizedTensor
from bayestensor.tensors.canonical import is_tree, side_triangles

FORMATS = bt.available_formats()
SHAPE = ((3, 2, 4), (2, 3, 2))


def random_tensor(fmt: str, seed: int = 0) -> FactorizedTensor:
    torch.manual_seed(seed)
    t = FactorizedTensor(fmt, *SHAPE, 3, method="map", dtype=torch.float64)
    with torch.no_grad():  # factors of unequal scales, so no side is close to orthonormal
        for g in t.factors:
            g.copy_(torch.randn_like(g) * torch.rand_like(g) * 3)
    return t


def side_contraction(t: FactorizedTensor, bond: int, member: int) -> torch.Tensor:
    """The contraction of every factor on ``member``'s side of ``bond``, as a dense ``(rows, r)`` matrix (einsum)."""
    net = t.fmt.network(t.out_shape, t.in_shape, t.ranks)
    name = net.bond_indices[bond]
    start = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[bond].members[member][0]
    side, todo = {start}, [start]
    while todo:  # every factor reachable from `start` without crossing `bond`
        f = todo.pop()
        for other, idx in enumerate(net.factor_indices):
            if other not in side and any(i in idx for i in net.factor_indices[f] if i != name):
                side.add(other)
                todo.append(other)
    letters = {i: chr(97 + k) for k, i in enumerate(net.sizes)}
    inputs = [(t.factors[f].detach(), "".join(letters[i] for i in net.factor_indices[f])) for f in sorted(side)]
    counts: dict[str, int] = {}
    for _, spec in inputs:
        for ch in spec:
            counts[ch] = counts.get(ch, 0) + 1
    free = "".join(ch for ch in dict.fromkeys("".join(s for _, s in inputs)) if counts[ch] == 1 and ch != letters[name])
    out = torch.einsum(",".join(s for _, s in inputs) + "->" + free + letters[name], *[g for g, _ in inputs])
    return out.reshape(-1, t.ranks[bond])


def _is_tree_format(fmt: str) -> bool:
    t = random_tensor(fmt)
    return is_tree(len(t.factors), t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if _is_tree_format(f)])
def test_side_triangles_are_the_triangles_of_the_dense_sides(fmt):
    """``T_aᵀ T_a = Lᵀ L`` and ``T_bᵀ T_b = Rᵀ R`` for the einsum-contracted sides, and ``T_a T_bᵀ`` has the
    singular values of ``L Rᵀ`` (the weight's unfolding at the bond)."""
    t = random_tensor(fmt)
    groups = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)
    sides = side_triangles([g.detach() for g in t.factors], groups)
    assert sides is not None and len(sides) == len(groups)
    for group, (ta, tb) in zip(groups, sides, strict=True):
        left, right = side_contraction(t, group.bond, 0), side_contraction(t, group.bond, 1)
        torch.testing.assert_close(ta.T @ ta, left.T @ left, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(tb.T @ tb, right.T @ right, rtol=1e-10, atol=1e-9)
        p = min(ta.shape[0], tb.shape[0])
        torch.testing.assert_close(
            torch.linalg.svdvals(ta @ tb.T)[:p], torch.linalg.svdvals(left @ right.T)[:p], rtol=1e-10, atol=1e-9
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_removing_a_rank_index_changes_the_weight_by_its_contribution(fmt):
    """``‖W − W_{without r}‖_F = c_r`` for every bond and index, in the gauge the factors happen to be in."""
    t = random_tensor(fmt, seed=1)
    w = t.to_matrix().detach().clone()
    groups = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)
    for group, c in zip(groups, t.contributions(), strict=True):
        for r in range(t.ranks[group.bond]):
            saved = [t.factors[f].detach().clone() for f, _ in group.members]
            with torch.no_grad():
                for f, axis in group.members[:1]:  # zeroing one member's slice removes the index's term
                    t.factors[f].select(axis, r).zero_()
            change = torch.linalg.norm(t.to_matrix().detach() - w)
            with torch.no_grad():
                for (f, _), g in zip(group.members, saved, strict=True):
                    t.factors[f].copy_(g)
            torch.testing.assert_close(c[r], change, rtol=1e-9, atol=1e-12)


def test_a_component_the_rest_of_the_train_maps_to_nothing_carries_nothing():
    """A TT index whose slice in one core is large but lies in the null space of the next core's other slices.

    The product of the slice norms next to the bond sees it as large; its contribution is zero, and ``prune``
    removes it while ``W`` stays.
    """
    torch.manual_seed(0)
    layer = bt.TensorizedLinear(16, 16, format="tt", max_rank=[2, 2, 2], in_shape=(4, 4), out_shape=(4, 4),
                                method="map", bias=False, dtype=torch.float64)  # fmt: skip
    g0, g1, g2, g3 = layer.weight.factors
    with torch.no_grad():  # bond 1 (between cores 1 and 2): index 1 is fed nothing by bond 0's index space
        g1[:, :, 1].zero_()
        g1[1, :, 1] = 5.0  # only reachable through bond 0's index 1 ...
        g0[:, :, 1].zero_()  # ... which core 0 never feeds
    w = layer.full_weight().detach().clone()
    t = layer.weight
    local = [float(torch.linalg.norm(g1[:, :, r].detach()) * torch.linalg.norm(g2[r].detach())) for r in range(2)]
    assert local[1] / max(local) > 0.1  # the neighbours alone call it large
    assert float(t.contributions()[1][1]) == 0.0
    bt.prune(torch.nn.Sequential(layer), threshold=1e-6)
    assert t.ranks[1] == 1
    torch.testing.assert_close(layer.full_weight(), w, rtol=1e-9, atol=1e-12)
