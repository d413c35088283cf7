"""The predictor scan's two statistics of the updates, against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.predictor_scan import UpdateTracker


def _statistics(updates):
    tracker = UpdateTracker([])
    tracker.updates = [torch.tensor(u, dtype=torch.float64) for u in updates]
    return tracker.statistics()


def test_steps_that_all_point_one_way_are_straight():
    assert _statistics([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]]) == pytest.approx((1.0, 1.0))


def test_a_step_back_cancels_the_path():
    cos, straightness = _statistics([[3.0, 4.0], [-3.0, -4.0]])
    assert cos == pytest.approx(-1.0)
    assert straightness == 0.0


def test_orthogonal_steps_by_hand():
    """Two unit steps at right angles: cos 0, straightness sqrt(2) / 2."""
    assert _statistics([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx((0.0, math.sqrt(2) / 2))


def test_the_tracker_records_each_steps_update_from_the_optimizer_hooks():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    sgd = torch.optim.SGD([w], lr=0.5)
    tracker = UpdateTracker([w])
    sgd.register_step_pre_hook(tracker.pre)
    sgd.register_step_post_hook(tracker.post)
    for gradient in ([1.0, 0.0], [0.0, 2.0]):
        w.grad = torch.tensor(gradient, dtype=torch.float64)
        sgd.step()
    assert [u.tolist() for u in tracker.updates] == [[-0.5, 0.0], [0.0, -1.0]]
