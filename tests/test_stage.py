"""A stage on quadratics, where the loss along Δ is a parabola with a known minimiser."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st
from reference import bitwise_equal, integer_minimiser, paper_fast_forward, quadratic_along_ray
from strategies import Quadratic, QuadraticSpec, quadratics

# A tie φ(τ) = φ(τ-1) is decided by rounding, not by the closed form; keep examples whose
# threshold ½ - b/c is at least this far (in units of τ) from an integer.
TIE_MARGIN = 1e-3
# float64 evaluation error of φ is ~1e-15·|φ|; the step φ(τ) - φ(τ-1) must dwarf it.
ROUNDING_FLOOR = 1e-10


def _sgd_step_then_stage(spec: QuadraticSpec, eta: float, max_tau: int, search: str = "linear"):
    """One SGD step from x0 (lr = eta / λmax), then the stage after it (interval=1)."""
    model = Quadratic(spec)
    lr = eta / float(np.linalg.eigvalsh(spec.a).max())
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD([model.x, model.frozen], lr=lr)
    ff = paper_fast_forward(
        sgd,
        model,
        val_closure=model,
        interval=1,
        max_tau=max_tau,
        patience=None,
        search=search,
        min_improvement=0.0,
    )
    model().backward()
    ff.step()

    ref_sgd = torch.optim.SGD([reference.x], lr=lr)
    reference().backward()
    w0 = reference.x.detach().clone()
    ref_sgd.step()
    w1 = reference.x.detach().clone()
    return model, ff, w0, w1


@pytest.mark.parametrize("search", ["linear", "doubling", "parabolic", "warm_start"])
@given(
    spec=quadratics(),
    eta=st.floats(1e-3, 1.9),
    max_tau=st.integers(1, 64),
)
def test_accepted_tau_is_the_integer_minimiser_along_delta(search, spec, eta, max_tau):
    model, ff, w0, w1 = _sgd_step_then_stage(spec, eta, max_tau, search)
    delta = w1 - w0
    phi0, b, c = quadratic_along_ray(spec.a, spec.x_star, w1.numpy(), delta.numpy())
    assume(c > 0)
    threshold = 0.5 - b / c
    assume(abs(threshold - round(threshold)) > TIE_MARGIN)
    assume(c * TIE_MARGIN > ROUNDING_FLOOR * (1.0 + abs(phi0)))

    expected_tau = integer_minimiser(b, c, max_tau)
    event({0: "tau = 0", max_tau: "tau = max_tau"}.get(expected_tau, "0 < tau < max_tau"))
    (record,) = ff.stats.history
    assert record.tau == expected_tau
    if search == "linear":
        assert record.evaluations == (expected_tau + 2 if expected_tau < max_tau else max_tau + 1)
    expected_x = w1.clone().add_(delta, alpha=expected_tau) if expected_tau else w1
    assert bitwise_equal(model.x.detach(), expected_x)
    assert record.loss_after == float(model().detach())


@given(spec=quadratics(), eta=st.floats(1e-3, 3.0), max_tau=st.integers(1, 64))
def test_stage_never_ends_above_its_starting_loss(spec, eta, max_tau):
    model, ff, _, w1 = _sgd_step_then_stage(spec, eta, max_tau)
    assume(ff.stats.stages == 1)
    (record,) = ff.stats.history
    assert record.loss_after <= record.loss_before
    assert float(model().detach()) == record.loss_after
    if record.tau == 0:
        assert bitwise_equal(model.x.detach(), w1)


@given(spec=quadratics(), eta=st.floats(1e-3, 1.9))
def test_stage_leaves_frozen_params_untouched(spec, eta):
    model, _, _, _ = _sgd_step_then_stage(spec, eta, max_tau=32)
    assert bitwise_equal(model.frozen.detach(), Quadratic(spec).frozen.detach())


@given(spec=quadratics(), steps=st.integers(1, 4), lr=st.floats(1e-3, 0.5))
def test_stage_leaves_optimizer_state_and_grads_untouched(spec, steps, lr):
    model = Quadratic(spec)
    adam = torch.optim.Adam([model.x], lr=lr)
    after_base_step = {}

    def remember_state(optimizer, args, kwargs):
        after_base_step["state"] = copy.deepcopy(optimizer.state_dict()["state"])
        after_base_step["grad"] = model.x.grad.clone()

    adam.register_step_post_hook(remember_state)
    ff = paper_fast_forward(
        adam, model, val_closure=model, interval=steps, patience=None, min_improvement=0.0
    )
    for _ in range(steps):
        model.x.grad = None
        model().backward()
        ff.step()
    assume(ff.stats.stages == 1)

    state = adam.state_dict()["state"]
    for key, value in after_base_step["state"][0].items():
        assert bitwise_equal(state[0][key], value), key
    assert bitwise_equal(model.x.grad, after_base_step["grad"])
