"""When stages run, when they do not, and the give-up rule."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import bitwise_equal
from strategies import Quadratic, fixed_quadratic, quadratics

from fastforward import FastForward


def _train(model, optimizer, steps):
    """Plain loop: backward on the training loss, ``optimizer.step()``, ``zero_grad()``.

    Returns the parameter after every step.
    """
    trajectory = []
    for _ in range(steps):
        model().backward()
        optimizer.step()
        optimizer.zero_grad()
        trajectory.append(model.x.detach().clone())
    return trajectory


@given(
    spec=quadratics(),
    interval=st.integers(1, 5),
    warmup=st.integers(0, 5),
    steps=st.integers(0, 25),
)
def test_stages_run_exactly_after_the_scheduled_steps(spec, interval, warmup, steps):
    assume(not np.array_equal(spec.x0, spec.x_star))
    model = Quadratic(spec)
    evaluated_after = Counter()
    adam = torch.optim.Adam([model.x], lr=0.05)

    def val_closure():
        evaluated_after[ff.stats.optimizer_steps] += 1
        return model()

    ff = FastForward(adam, model, val_closure, interval, warmup=warmup, patience=None)
    _train(model, ff, steps)

    expected = [n for n in range(1, steps + 1) if n > warmup and (n - warmup) % interval == 0]
    assert sorted(evaluated_after) == expected
    assert ff.stats.skipped_stages == 0
    assert [r.step for r in ff.stats.history] == sorted(evaluated_after)
    assert ff.stats.optimizer_steps == steps
    assert ff.stats.evaluations == sum(evaluated_after.values())
    assert ff.stats.simulated_steps == sum(r.tau for r in ff.stats.history)


@given(spec=quadratics(), steps=st.integers(1, 20), lr=st.floats(1e-3, 0.5))
def test_disabled_wrapper_is_bitwise_the_bare_optimizer(spec, steps, lr):
    model = Quadratic(spec)
    bare_model = copy.deepcopy(model)
    evaluations = []
    ff = FastForward(
        torch.optim.Adam([model.x], lr=lr),
        model,
        lambda: evaluations.append(1) or model(),
        interval=1,
        enabled=False,
    )
    trajectory = _train(model, ff, steps)
    bare = _train(bare_model, torch.optim.Adam([bare_model.x], lr=lr), steps)

    assert all(bitwise_equal(a, b) for a, b in zip(trajectory, bare, strict=True))
    assert evaluations == []
    assert ff.stats.optimizer_steps == steps


@given(spec=quadratics(), steps=st.integers(1, 20), lr=st.floats(1e-3, 0.5))
def test_warmup_longer_than_training_is_bitwise_the_bare_optimizer(spec, steps, lr):
    model = Quadratic(spec)
    bare_model = copy.deepcopy(model)
    ff = FastForward(torch.optim.Adam([model.x], lr=lr), model, model, interval=1, warmup=steps)
    trajectory = _train(model, ff, steps)
    bare = _train(bare_model, torch.optim.Adam([bare_model.x], lr=lr), steps)
    assert all(bitwise_equal(a, b) for a, b in zip(trajectory, bare, strict=True))


def test_step_forwards_the_training_closure_once_and_returns_its_loss():
    model = Quadratic(fixed_quadratic())
    calls = []

    def closure():
        calls.append(1)
        loss = model()
        loss.backward()
        return loss

    ff = FastForward(torch.optim.SGD([model.x], lr=0.01), model, model, interval=1)
    returned = ff.step(closure)
    assert len(calls) == 1
    assert torch.is_tensor(returned)
    assert ff.stats.optimizer_steps == 1


class _ScriptedValidation:
    """Validation losses that make stage ``k`` improve at τ = 1 iff ``improves[k]``.

    Per stage it answers 1.0 at τ = 0, then 0.5 (improves) or 2.0 (does not), then 3.0.
    """

    def __init__(self, improves):
        self.improves = improves
        self.calls_per_stage = Counter()
        self.ff = None

    def __call__(self):
        step = self.ff.stats.optimizer_steps
        self.calls_per_stage[step] += 1
        stage_index = len(self.calls_per_stage) - 1
        losses = [1.0, 0.5 if self.improves[stage_index] else 2.0, 3.0]
        return losses[self.calls_per_stage[step] - 1]


def _expected_give_up(improves, patience):
    """Index of the stage after which the rule fires, or None."""
    in_a_row = 0
    for index, improved in enumerate(improves):
        in_a_row = 0 if improved else in_a_row + 1
        if in_a_row == patience:
            return index
    return None


@given(
    improves=st.lists(st.booleans(), min_size=1, max_size=12),
    patience=st.integers(1, 4),
    interval=st.integers(1, 3),
)
def test_gives_up_after_patience_failed_stages_in_a_row(improves, patience, interval):
    model = Quadratic(fixed_quadratic())
    validation = _ScriptedValidation(improves)
    adam = torch.optim.Adam([model.x], lr=0.01)
    ff = FastForward(adam, model, validation, interval, patience=patience)
    validation.ff = ff
    _train(model, ff, len(improves) * interval)

    last = _expected_give_up(improves, patience)
    ran = len(improves) if last is None else last + 1
    assert ff.stats.stages == ran
    assert [r.tau for r in ff.stats.history] == [int(i) for i in improves[:ran]]
    assert ff.active == (last is None)
    assert ff.stats.gave_up_at_step == (None if last is None else (last + 1) * interval)


@given(spec=quadratics(), steps_after=st.integers(1, 10), patience=st.integers(1, 3))
def test_after_giving_up_the_wrapper_is_bitwise_the_bare_optimizer(spec, steps_after, patience):
    assume(not np.array_equal(spec.x0, spec.x_star))
    model = Quadratic(spec)
    adam = torch.optim.Adam([model.x], lr=0.05)
    ff = FastForward(adam, model, lambda: 0.0, interval=2, patience=patience)
    _train(model, ff, 2 * patience)
    assert not ff.active
    assert ff.stats.gave_up_at_step == 2 * patience

    bare_model = copy.deepcopy(model)
    bare = copy.deepcopy(adam)
    bare.param_groups[0]["params"] = [bare_model.x]
    bare.state = {bare_model.x: bare.state[next(iter(bare.state))]}
    trajectory = _train(model, ff, steps_after)
    expected = _train(bare_model, bare, steps_after)
    assert all(bitwise_equal(a, b) for a, b in zip(trajectory, expected, strict=True))
    assert ff.stats.stages == patience


class _ScriptedTaus:
    """Validation losses under linear search that make stage ``k`` accept ``taus[k]``.

    Linear search evaluates τ = 0, 1, 2, ... in order, so the i-th call of a stage is τ = i; the
    loss ``(i - taus[k])**2`` along the ray has its integer minimiser at ``taus[k]``.
    """

    def __init__(self, taus):
        self.taus = taus
        self.calls_per_stage = Counter()
        self.ff = None

    def __call__(self):
        step = self.ff.stats.optimizer_steps
        self.calls_per_stage[step] += 1
        target = self.taus[len(self.calls_per_stage) - 1]
        return float((self.calls_per_stage[step] - 1 - target) ** 2)


def _expected_adaptive_schedule(taus, interval, shortest, longest, warmup, steps):
    """The documented rule, step by step: (steps after which stages ran, final interval)."""
    stages, last = [], warmup
    for step in range(1, steps + 1):
        if len(stages) == len(taus) or step - last < interval:
            continue
        tau = taus[len(stages)]
        stages.append(step)
        last = step
        if tau >= interval:
            interval = max(shortest, interval // 2)
        elif tau <= 1:
            interval = min(longest, interval * 2)
    return stages, interval


@given(
    taus=st.lists(st.integers(0, 20), min_size=1, max_size=10),
    bounds=st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 8)),
    warmup=st.integers(0, 3),
)
def test_adaptive_interval_halves_after_long_stages_and_doubles_after_short_ones(
    taus, bounds, warmup
):
    shortest, above, beyond = bounds
    interval, longest = shortest + above, shortest + above + beyond
    steps = warmup + longest * len(taus)
    expected_steps, expected_interval = _expected_adaptive_schedule(
        taus, interval, shortest, longest, warmup, steps
    )
    model = Quadratic(fixed_quadratic())
    validation = _ScriptedTaus(taus + [0] * steps)  # stages beyond the script: τ = 0
    ff = FastForward(
        torch.optim.Adam([model.x], lr=0.01),
        model,
        validation,
        interval,
        warmup=warmup,
        adaptive_interval=(shortest, longest),
        patience=None,
        search="linear",
    )
    validation.ff = ff
    _train(model, ff, steps)

    ran = [r.step for r in ff.stats.history]
    assert ran[: len(expected_steps)] == expected_steps
    assert [r.tau for r in ff.stats.history[: len(taus)]] == taus
    if len(ran) == len(taus):
        assert ff.current_interval == expected_interval


@given(
    interval=st.integers(1, 8),
    ratio=st.floats(0.05, 5.0),
    max_tau=st.integers(1, 60),
    adaptive=st.booleans(),
)
def test_max_tau_ratio_caps_tau_at_that_many_current_intervals(interval, ratio, max_tau, adaptive):
    steps, longest = 40, 16
    model = Quadratic(fixed_quadratic())
    validation = _ScriptedTaus([1000] * steps)  # keeps improving far past any cap
    ff = FastForward(
        torch.optim.Adam([model.x], lr=0.01),
        model,
        validation,
        interval,
        max_tau=max_tau,
        max_tau_ratio=ratio,
        adaptive_interval=(1, longest) if adaptive else None,
        search="linear",
    )
    validation.ff = ff
    _train(model, ff, steps)

    expected, last, current = [], 0, interval  # (step, τ) of each stage, by the documented rule
    for step in range(1, steps + 1):
        if step - last < current:
            continue
        tau = min(max_tau, max(1, math.floor(ratio * current)))
        expected.append((step, tau))
        last = step
        if adaptive and tau >= current:
            current = max(1, current // 2)
        elif adaptive and tau <= 1:
            current = min(longest, current * 2)
    assert [(record.step, record.tau) for record in ff.stats.history] == expected


@pytest.mark.parametrize(("min_improvement", "tau"), [(None, 0), (1e-4, 1), (0.0, 1)])
def test_a_stage_gaining_less_than_min_improvement_stays_at_w_n(min_improvement, tau):
    """L_0 = 1, L_1 = 0.9995 (a 0.05% gain), L_2 = 0.9999: the default margin is 0.1%."""
    model = Quadratic(fixed_quadratic())
    losses = iter([1.0, 0.9995, 0.9999])
    options = {} if min_improvement is None else {"min_improvement": min_improvement}
    adam = torch.optim.Adam([model.x], lr=0.01)
    ff = FastForward(adam, model, lambda: next(losses), 1, search="linear", **options)
    model().backward()
    ff.step()
    after_step = ff.stats.history[0]
    assert (after_step.tau, after_step.evaluations) == (tau, 3)
    assert after_step.loss_after == (1.0 if tau == 0 else 0.9995)
