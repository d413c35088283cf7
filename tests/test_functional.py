"""The tensor math of a stage on plain lists, including edge-case tensors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import bitwise_equal

from fastforward._kernels import _max_abs, _reversed_delta_from_snapshot_, _set_point_

# w + τd rounds at most twice (τd, then the sum) when the kernel does not fuse it.
ROUNDINGS = 2
DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _edge_case_tensors(dtype):
    """A zero-size tensor, a non-contiguous view, a scalar and a matrix."""
    torch.manual_seed(0)
    base = torch.randn(4, 6, dtype=torch.float64)
    return [
        torch.empty(0, dtype=dtype),
        base.t().to(dtype)[:, ::2],  # non-contiguous
        torch.tensor(-0.0, dtype=dtype),
        torch.randn(3, 5, dtype=torch.float64).to(dtype),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [0, 1, 7, 250])
def test_set_point_foreach_matches_the_for_loop_and_the_formula(dtype, tau):
    anchor = _edge_case_tensors(dtype)
    delta = [t * 0.5 + 0.25 for t in _edge_case_tensors(dtype)]
    by_foreach = [torch.zeros_like(t) for t in anchor]
    by_loop = [torch.zeros_like(t) for t in anchor]
    _set_point_(by_foreach, anchor, delta, tau, foreach=True)
    _set_point_(by_loop, anchor, delta, tau, foreach=False)
    eps = torch.finfo(dtype).eps
    for a, b, w, d in zip(by_foreach, by_loop, anchor, delta, strict=True):
        assert bitwise_equal(a, b)
        if tau == 0:
            assert bitwise_equal(a, w)
            continue
        exact = w.double() + tau * d.double()
        # One rounding of w + τd into `dtype` (fused or not): within ROUNDINGS ulps of exact.
        scale = w.double().abs() + tau * d.double().abs()
        assert torch.all((a.double() - exact).abs() <= ROUNDINGS * eps * scale)


def test_set_point_zero_is_the_anchor_bit_for_bit():
    anchor = [torch.tensor([-0.0, math.inf, -math.inf, math.nan])]
    delta = [torch.tensor([1.0, 1.0, 1.0, 1.0])]
    params = [torch.zeros(4)]
    _set_point_(params, anchor, delta, 3, foreach=True)
    _set_point_(params, anchor, delta, 0, foreach=True)
    assert bitwise_equal(params[0], anchor[0])


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@given(
    before=hnp.arrays("float32", 5, elements=st.floats(-1e3, 1e3, width=32)),
    after=hnp.arrays("float32", 5, elements=st.floats(-1e3, 1e3, width=32)),
)
def test_reversed_delta_is_before_minus_after_exactly(foreach, before, after):
    snapshot = [torch.from_numpy(before.copy())]
    params = [torch.from_numpy(after.copy())]
    _reversed_delta_from_snapshot_(snapshot, params, foreach=foreach)
    assert torch.equal(snapshot[0], torch.from_numpy(before) - params[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@given(
    before=hnp.arrays("float64", 6, elements=st.floats(-1e4, 1e4)),
    after=hnp.arrays("float64", 6, elements=st.floats(-1e4, 1e4)),
    tau=st.integers(0, 1000),
)
def test_a_point_on_the_reversed_delta_has_the_bits_of_one_on_delta(
    dtype, foreach, before, after, tau
):
    """W_n + (-τ)(W_{n-1} - W_n) is bitwise W_n + τΔ with Δ = -(W_{n-1} - W_n): one pass is free.

    (Δ as ``W_n - W_{n-1}`` would differ in the sign of zero where the update is zero: x - x is
    +0, so -0 + τ(+0) would turn -0 into +0. Both forms here leave such a parameter bitwise.)
    """
    w_previous = torch.from_numpy(before).to(dtype)
    w_n = torch.from_numpy(after).to(dtype)
    reversed_delta = [w_previous.clone()]
    _reversed_delta_from_snapshot_(reversed_delta, [w_n], foreach=foreach)
    by_reversed, by_delta = [torch.empty_like(w_n)], [torch.empty_like(w_n)]
    _set_point_(by_reversed, [w_n], reversed_delta, tau, foreach=foreach, reversed_delta=True)
    _set_point_(by_delta, [w_n], [(w_previous - w_n).neg()], tau, foreach=foreach)
    assert bitwise_equal(by_reversed[0], by_delta[0])
    unchanged = w_previous == w_n
    assert bitwise_equal(by_reversed[0][unchanged], w_n[unchanged])


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        ([], 0.0),
        ([torch.empty(0), torch.zeros(3)], 0.0),
        ([torch.zeros(2), torch.tensor([0.0, -2.5])], 2.5),
        ([torch.tensor([1e-163], dtype=torch.float64), torch.zeros(1)], 1e-163),
        ([torch.tensor([1.0]), torch.tensor([math.inf], dtype=torch.bfloat16)], math.inf),
    ],
    ids=["none", "zero-size-and-zeros", "max", "float64-below-float32-range", "inf"],
)
def test_max_abs(tensors, expected):
    assert _max_abs(tensors) == expected


def test_max_abs_of_nan_is_nan():
    assert math.isnan(_max_abs([torch.zeros(2), torch.tensor([math.nan, 1.0])]))
