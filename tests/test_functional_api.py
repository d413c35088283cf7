"""fast_forward_stage on plain tensors, without a wrapper."""

from __future__ import annotations

import pytest
import torch
from reference import bitwise_equal

from fastforward import fast_forward_stage


def _line(center):
    params = [torch.tensor([0.5, -1.0], dtype=torch.float64)]
    delta = [torch.tensor([0.25, 0.0], dtype=torch.float64)]
    calls = []

    def loss():
        calls.append(params[0].clone())
        return float((params[0][0] - center) ** 2)

    return params, delta, loss, calls


@pytest.mark.parametrize("search", ["linear", "doubling", "parabolic", "warm_start"])
def test_stage_lands_on_the_minimiser_along_delta(search):
    params, delta, loss, _ = _line(center=10.6)  # minimiser: 0.5 + 0.25 τ = 10.5 at τ = 40
    start = [torch.tensor([0.5, -1.0], dtype=torch.float64)]
    result = fast_forward_stage(params, delta, loss, search=search, start=33)
    assert result.tau == 40
    assert bitwise_equal(params[0], start[0].add(delta[0], alpha=40))
    assert result.loss_after < result.loss_before


def test_exception_lands_on_the_best_point_and_propagates():
    params, delta, loss, calls = _line(center=100.0)

    def failing():
        if len(calls) == 5:
            raise KeyboardInterrupt
        return loss()

    with pytest.raises(KeyboardInterrupt):
        fast_forward_stage(params, delta, failing)
    assert bitwise_equal(params[0], calls[-1])  # τ = 4, the best evaluated before the failure


def test_anchor_buffers_are_used_and_rejected_arguments_name_themselves():
    params, delta, loss, _ = _line(center=2.0)
    anchor = [torch.full((2,), 7.0, dtype=torch.float64)]
    fast_forward_stage(params, delta, loss, anchor=anchor)
    assert torch.equal(anchor[0], torch.tensor([0.5, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="search must be one of"):
        fast_forward_stage(params, delta, loss, search="newton")
    with pytest.raises(ValueError, match="max_tau must be >= 1, got 0"):
        fast_forward_stage(params, delta, loss, max_tau=0)
