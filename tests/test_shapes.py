"""Property tests of the mode-shape factoriser (the inputs really are arbitrary integers)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bayestensor.formats import balanced_factors, tensorized_shape
from bayestensor.formats.shapes import BALANCE_TOLERANCE


@given(st.integers(1, 5000), st.integers(1, 4))
def test_balanced_factors_are_exact_and_sorted(n, k):
    f = balanced_factors(n, k)
    assert len(f) == k and math.prod(f) == n and list(f) == sorted(f)


@given(st.integers(1, 200_000), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_tensorized_shape_covers_n_with_little_padding_and_balance(n, k):
    shape = tensorized_shape(n, k)
    padded = math.prod(shape)
    assert len(shape) == k and all(s >= 1 for s in shape)
    assert n <= padded <= n + max(16, 0.05 * n) + 3 * padded ** ((k - 1) / k)
    if padded != n:  # padding only happens to buy balance
        ideal = math.ceil(padded ** (1 / k) - 1e-9)
        assert max(shape) <= BALANCE_TOLERANCE * ideal + 1


def test_known_shapes():
    assert tensorized_shape(1024, 4) == (4, 4, 8, 8)
    assert tensorized_shape(61, 2) == (7, 9)  # a prime is padded to 63
    assert math.prod(tensorized_shape(10_131_227, 3)) >= 10_131_227
