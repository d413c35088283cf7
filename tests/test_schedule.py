"""When stages run, when they do not, and the give-up rule, against ``ReferenceFastForward``.

The wrapper and the reference (tests/reference.py) train copies of one model side by side; every
test checks the same stages, τs and stats and bitwise the same parameters after every step. The
``test_reference_*`` examples pin the reference itself to the documented rules, by hand.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    ReferenceFastForward,
    all_bitwise_equal,
    paper_fast_forward,
    parameters_of,
    without_timings,
)
from strategies import Quadratic, fixed_quadratic, quadratics

from fastforward import SEARCH_STRATEGIES
from fastforward.functional import (
    doubling_search,
    linear_search,
    parabolic_search,
    warm_start_search,
)

SEARCHES = {
    "linear": linear_search,
    "doubling": doubling_search,
    "parabolic": parabolic_search,
    "warm_start": warm_start_search,
}


def _train(model, optimizer, steps, before_step=None):
    """Plain loop: backward on the training loss, ``optimizer.step()``, ``zero_grad()``.

    ``before_step(n, model, optimizer)`` runs between the backward and step ``n``. Returns a copy
    of every parameter after every step.
    """
    trajectory = []
    for n in range(1, steps + 1):
        model().backward()
        if before_step is not None:
            before_step(n, model, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        trajectory.append(parameters_of(model))
    return trajectory


def _training_loss(model, clock):
    return model


def _run(
    kind,
    spec,
    steps,
    *,
    validation=_training_loss,
    before_step=None,
    optimizer=torch.optim.Adam,
    lr=0.05,
    **options,
):
    """A ``FastForward`` or ``ReferenceFastForward`` trained for ``steps`` steps from ``spec``.

    ``validation(model, clock)`` builds its ``val_closure``; ``clock()`` is the number of
    optimizer steps the run has taken. The run's ``trajectory`` holds the parameters after every
    step.
    """
    model = Quadratic(spec)
    owner = []
    val_closure = validation(model, lambda: owner[0].stats.optimizer_steps)
    run = kind(optimizer([model.x], lr=lr), model, val_closure, **options)
    owner.append(run)
    run.trajectory = _train(model, run, steps, before_step)
    return run


def _run_both(spec, steps, *, per_run=({}, {}), **options):
    """The wrapper and the reference, trained alike; ``per_run`` adds options to each."""
    kinds = (paper_fast_forward, ReferenceFastForward)
    return [
        _run(kind, spec, steps, **{**options, **extra})
        for kind, extra in zip(kinds, per_run, strict=True)
    ]


def _assert_same_run(ff, reference):
    """Same stats and stage records (timings aside), schedule state, and parameters every step."""
    assert without_timings(ff.stats) == without_timings(reference.stats)
    assert ff.active == reference.active
    assert ff.current_interval == reference.current_interval
    assert len(ff.trajectory) == len(reference.trajectory)
    for n, (a, b) in enumerate(zip(ff.trajectory, reference.trajectory, strict=True), 1):
        assert all_bitwise_equal(a, b), f"parameters differ after step {n}"


class _CountingValidation:
    """The training loss as validation loss; counts the calls after each optimizer step."""

    def __init__(self, model, clock):
        self.model, self.clock = model, clock
        self.evaluated_after = Counter()

    def __call__(self):
        self.evaluated_after[self.clock()] += 1
        return self.model()


class _RecordingSearch:
    """A built-in strategy that records the ``(max_tau, start)`` of every stage."""

    def __init__(self, name):
        self.strategy, self.calls = SEARCHES[name], []

    def __call__(self, ray, max_tau, start):
        self.calls.append((max_tau, start))
        self.strategy(ray, max_tau, start)


@given(
    spec=quadratics(),
    interval=st.integers(1, 5),
    warmup=st.integers(0, 5),
    steps=st.integers(0, 25),
)
def test_stages_run_exactly_after_the_scheduled_steps(spec, interval, warmup, steps):
    assume(not np.array_equal(spec.x0, spec.x_star))
    ff, reference = _run_both(
        spec, steps, validation=_CountingValidation, interval=interval, warmup=warmup, patience=None
    )
    _assert_same_run(ff, reference)
    evaluated_after = ff.val_closure.evaluated_after
    assert evaluated_after == reference.val_closure.evaluated_after
    assume(ff.stats.skipped_stages == 0)  # not a subnormal start that no step moves
    assert [r.step for r in ff.stats.history] == sorted(evaluated_after)
    assert ff.stats.optimizer_steps == steps
    assert ff.stats.evaluations == sum(evaluated_after.values())
    assert ff.stats.simulated_steps == sum(r.tau for r in ff.stats.history)


@st.composite
def _options(draw):
    """Any combination of the schedule's options, for intervals of at most 5."""
    interval = draw(st.integers(1, 5))
    adaptive = draw(st.booleans())
    span = "step" if adaptive else draw(st.sampled_from(["step", "interval"]))
    smallest_ratio = 1.0 if span == "interval" else 0.05  # at least one Δ's steps
    return {
        "interval": interval,
        "warmup": draw(st.integers(0, 4)),
        "max_tau": draw(st.integers(1, 60)),
        "max_tau_ratio": draw(st.none() | st.floats(smallest_ratio, 5.0)),
        "adaptive_interval": (
            (draw(st.integers(1, interval)), interval + draw(st.integers(0, 6)))
            if adaptive
            else None
        ),
        "patience": draw(st.none() | st.integers(1, 3)),
        "search": draw(st.sampled_from(SEARCH_STRATEGIES)),
        "min_improvement": draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3])),  # 0.3: give up
        "delta_span": span,
    }


@given(
    spec=quadratics(),
    options=_options(),
    steps=st.integers(5, 30),
    lr=st.floats(1e-3, 0.5),
    paused=st.sets(st.integers(1, 30), max_size=6),
    record_search=st.booleans(),
)
def test_wrapper_matches_the_reference_under_every_option(
    spec, options, steps, lr, paused, record_search
):
    """Also with ``enabled=False`` between some steps: the schedule waits and resumes."""

    def pause(n, model, optimizer):
        optimizer.enabled = n not in paused

    searches = [_RecordingSearch(options["search"]) for _ in range(2)]
    runs = _run_both(
        spec,
        steps,
        before_step=pause,
        lr=lr,
        per_run=[{"search": s} for s in searches] if record_search else ({}, {}),
        **options,
    )
    _assert_same_run(*runs)
    if record_search:
        assert searches[0].calls == searches[1].calls
        assert len(searches[0].calls) == runs[0].stats.stages


@given(spec=quadratics(), steps=st.integers(1, 20), lr=st.floats(1e-3, 0.5))
def test_disabled_wrapper_is_bitwise_the_bare_optimizer(spec, steps, lr):
    model = Quadratic(spec)
    bare_model = copy.deepcopy(model)
    evaluations = []
    ff = paper_fast_forward(
        torch.optim.Adam([model.x], lr=lr),
        model,
        lambda: evaluations.append(1) or model(),
        interval=1,
        enabled=False,
    )
    trajectory = _train(model, ff, steps)
    bare = _train(bare_model, torch.optim.Adam([bare_model.x], lr=lr), steps)

    assert all(all_bitwise_equal(a, b) for a, b in zip(trajectory, bare, strict=True))
    assert evaluations == []
    assert ff.stats.optimizer_steps == steps


@given(spec=quadratics(), steps=st.integers(1, 20), lr=st.floats(1e-3, 0.5))
def test_warmup_longer_than_training_is_bitwise_the_bare_optimizer(spec, steps, lr):
    model = Quadratic(spec)
    bare_model = copy.deepcopy(model)
    ff = paper_fast_forward(
        torch.optim.Adam([model.x], lr=lr), model, model, interval=1, warmup=steps
    )
    trajectory = _train(model, ff, steps)
    bare = _train(bare_model, torch.optim.Adam([bare_model.x], lr=lr), steps)
    assert all(all_bitwise_equal(a, b) for a, b in zip(trajectory, bare, strict=True))


def test_step_forwards_the_training_closure_once_and_returns_its_loss():
    model = Quadratic(fixed_quadratic())
    calls = []

    def closure():
        calls.append(1)
        loss = model()
        loss.backward()
        return loss

    ff = paper_fast_forward(torch.optim.SGD([model.x], lr=0.01), model, model, interval=1)
    returned = ff.step(closure)
    assert len(calls) == 1
    assert torch.is_tensor(returned)
    assert ff.stats.optimizer_steps == 1


class _ScriptedValidation:
    """Validation losses that make stage ``k`` improve at τ = 1 iff ``improves[k]``.

    Per stage it answers 1.0 at τ = 0, then 0.5 (improves) or 2.0 (does not), then 3.0.
    """

    def __init__(self, improves, clock):
        self.improves, self.clock = improves, clock
        self.calls_per_stage = Counter()

    def __call__(self):
        step = self.clock()
        self.calls_per_stage[step] += 1
        stage_index = len(self.calls_per_stage) - 1
        losses = [1.0, 0.5 if self.improves[stage_index] else 2.0, 3.0]
        return losses[self.calls_per_stage[step] - 1]


@given(
    improves=st.lists(st.booleans(), min_size=1, max_size=12),
    patience=st.integers(1, 4),
    interval=st.integers(1, 3),
)
def test_gives_up_after_patience_failed_stages_in_a_row(improves, patience, interval):
    ff, reference = _run_both(
        fixed_quadratic(),
        len(improves) * interval,
        validation=lambda model, clock: _ScriptedValidation(improves, clock),
        lr=0.01,
        interval=interval,
        patience=patience,
    )
    _assert_same_run(ff, reference)
    ran = ff.stats.stages
    assert [r.tau for r in ff.stats.history] == [int(i) for i in improves[:ran]]
    assert ff.stats.gave_up_at_step == (None if ff.active else ran * interval)


@pytest.mark.parametrize(
    ("improves", "patience", "stages", "gave_up_at_step"),
    [
        # fail, fail: off after stage 2 (step 4), stage 3 never runs
        ([False, False, True], 2, 2, 4),
        # fail, improve (resets the count), fail, fail: off after stage 4 (step 8)
        ([False, True, False, False, True], 2, 4, 8),
        # never two failures in a row: every stage runs
        ([False, True, False, True], 2, 4, None),
        ([False, False, False], 1, 1, 2),
    ],
    ids=["two-in-a-row", "count-resets", "never", "patience-1"],
)
def test_reference_gives_up_by_hand(improves, patience, stages, gave_up_at_step):
    reference = _run(
        ReferenceFastForward,
        fixed_quadratic(),
        2 * len(improves),
        validation=lambda model, clock: _ScriptedValidation(improves, clock),
        lr=0.01,
        interval=2,
        patience=patience,
    )
    assert reference.stats.stages == stages
    assert reference.stats.gave_up_at_step == gave_up_at_step
    assert reference.active == (gave_up_at_step is None)


@given(spec=quadratics(), steps_after=st.integers(1, 10), patience=st.integers(1, 3))
def test_after_giving_up_the_wrapper_is_bitwise_the_bare_optimizer(spec, steps_after, patience):
    """Every stage fails (the validation loss is flat), so stage ``patience`` is the last."""
    assume(not np.array_equal(spec.x0, spec.x_star))
    ff, reference = _run_both(
        spec,
        2 * patience + steps_after,
        validation=lambda model, clock: lambda: 0.0,
        interval=2,
        patience=patience,
    )
    _assert_same_run(ff, reference)
    # A subnormal start: Adam's first moment underflows, no step moves x, every stage is skipped
    # (test_skipped_stages_match_the_reference covers that).
    assume(ff.stats.skipped_stages == 0)
    assert not ff.active
    assert ff.stats.gave_up_at_step == 2 * patience
    assert ff.stats.stages == patience


def test_reference_after_giving_up_is_the_bare_optimizer():
    model = Quadratic(fixed_quadratic())
    bare_model = copy.deepcopy(model)
    adam = torch.optim.Adam([model.x], lr=0.05)
    reference = ReferenceFastForward(adam, model, lambda: 0.0, interval=1, patience=1)
    trajectory = _train(model, reference, 6)
    bare = _train(bare_model, torch.optim.Adam([bare_model.x], lr=0.05), 6)
    assert reference.stats.gave_up_at_step == 1
    assert all(all_bitwise_equal(a, b) for a, b in zip(trajectory, bare, strict=True))


class _ScriptedTaus:
    """Validation losses under linear search that make stage ``k`` accept ``taus[k]``.

    Linear search evaluates τ = 0, 1, 2, ... in order, so the i-th call of a stage is τ = i; the
    loss ``(i - taus[k])**2`` along the ray has its integer minimiser at ``taus[k]``.
    """

    def __init__(self, taus, clock):
        self.taus, self.clock = taus, clock
        self.calls_per_stage = Counter()

    def __call__(self):
        step = self.clock()
        self.calls_per_stage[step] += 1
        target = self.taus[len(self.calls_per_stage) - 1]
        return float((self.calls_per_stage[step] - 1 - target) ** 2)


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
    script = taus + [0] * steps  # stages beyond the script: τ = 0
    ff, reference = _run_both(
        fixed_quadratic(),
        steps,
        validation=lambda model, clock: _ScriptedTaus(script, clock),
        lr=0.01,
        interval=interval,
        warmup=warmup,
        adaptive_interval=(shortest, longest),
        patience=None,
        search="linear",
    )
    _assert_same_run(ff, reference)
    assert [r.tau for r in ff.stats.history[: len(taus)]] == taus
    assert len(ff.stats.history) >= len(taus)  # longest steps apart at most


def test_reference_adapts_the_interval_by_hand():
    """interval 4 in (2, 8), warmup 1: the stages after steps 5 (τ=5 ≥ 4: 4 -> 2),
    7 (τ=0: 2 -> 4), 11 (τ=1: 4 -> 8), 19 (τ=2: stays 8), 27 (τ=8 ≥ 8: 8 -> 4),
    31 (τ=0: 4 -> 8); the next would follow step 39."""
    reference = _run(
        ReferenceFastForward,
        fixed_quadratic(),
        36,
        validation=lambda model, clock: _ScriptedTaus([5, 0, 1, 2, 8, 0], clock),
        lr=0.01,
        interval=4,
        warmup=1,
        adaptive_interval=(2, 8),
        patience=None,
        search="linear",
    )
    expected = [(5, 5), (7, 0), (11, 1), (19, 2), (27, 8), (31, 0)]
    assert [(r.step, r.tau) for r in reference.stats.history] == expected
    assert reference.current_interval == 8


@given(
    interval=st.integers(1, 8),
    ratio=st.floats(0.05, 5.0),
    max_tau=st.integers(1, 60),
    adaptive=st.booleans(),
)
def test_max_tau_ratio_caps_tau_at_that_many_current_intervals(interval, ratio, max_tau, adaptive):
    """Also: the search is told that cap, and the previous τ (capped) as its start."""
    steps = 40
    searches = [_RecordingSearch("linear") for _ in range(2)]
    runs = _run_both(
        fixed_quadratic(),
        steps,
        validation=lambda model, clock: _ScriptedTaus([1000] * steps, clock),
        lr=0.01,
        per_run=[{"search": search} for search in searches],
        interval=interval,
        max_tau=max_tau,
        max_tau_ratio=ratio,
        adaptive_interval=(1, 16) if adaptive else None,
    )
    ff, reference = runs
    _assert_same_run(ff, reference)
    assert searches[0].calls == searches[1].calls
    # The scripted loss keeps falling, so every stage runs into its cap.
    assert [max_tau_now for max_tau_now, _ in searches[0].calls] == [
        r.tau for r in ff.stats.history
    ]


@pytest.mark.parametrize(
    ("ratio", "max_tau", "caps"),
    [
        (None, 7, [7, 7, 7]),
        (0.5, 100, [2, 2, 2]),  # floor(0.5 * 5)
        (0.1, 100, [1, 1, 1]),  # floor(0.1 * 5) = 0, but at least 1
        (3.0, 9, [9, 9, 9]),  # 15 > max_tau
        (1.0, 100, [5, 5, 5]),
    ],
    ids=["no-ratio", "half", "at-least-one", "at-most-max-tau", "one-interval"],
)
def test_reference_caps_tau_by_hand(ratio, max_tau, caps):
    """interval 5; the validation loss keeps falling along Δ, so each stage reaches its cap."""
    search = _RecordingSearch("linear")
    reference = _run(
        ReferenceFastForward,
        fixed_quadratic(),
        15,
        validation=lambda model, clock: _ScriptedTaus([1000] * 3, clock),
        lr=0.01,
        interval=5,
        max_tau=max_tau,
        max_tau_ratio=ratio,
        search=search,
    )
    assert [r.tau for r in reference.stats.history] == caps
    assert search.calls == [(caps[0], 1), (caps[1], caps[0]), (caps[2], caps[1])]


def test_reference_schedule_by_hand():
    """interval 3, warmup 2: stages after steps 5, 8, 11 (and none in the warmup)."""
    reference = _run(
        ReferenceFastForward,
        fixed_quadratic(),
        13,
        validation=_CountingValidation,
        interval=3,
        warmup=2,
        patience=None,
    )
    assert sorted(reference.val_closure.evaluated_after) == [5, 8, 11]
    assert [r.step for r in reference.stats.history] == [5, 8, 11]


_EVENTS = ("train", "zero_update", "nan_validation", "inf_gradient")


def _events_hook(events):
    """Before step ``n``: ``events[n - 1]`` decides what the step and its stage see."""

    def before_step(n, model, optimizer):
        event = events[n - 1]
        if event == "zero_update":
            model.x.grad.zero_()  # plain SGD: Δ = 0
        elif event == "inf_gradient":
            model.x.grad.fill_(float("inf"))  # Δ = -inf, and NaN ever after

    return before_step


class _EventValidation:
    """The training loss, or NaN after a step whose event is ``"nan_validation"``."""

    def __init__(self, model, clock, events):
        self.model, self.clock, self.events = model, clock, events

    def __call__(self):
        return float("nan") if self.events[self.clock() - 1] == "nan_validation" else self.model()


@given(
    spec=quadratics(),
    events=st.lists(st.sampled_from(_EVENTS[:3]), max_size=15).flatmap(
        lambda events: st.sampled_from([events, [*events, "inf_gradient", "train", "train"]])
    ),
    interval=st.integers(1, 3),
    patience=st.none() | st.integers(1, 3),
)
def test_skipped_stages_match_the_reference(spec, events, interval, patience):
    """Δ all zero, Δ not finite, or L_0 not finite: no stage; not a failed stage either."""
    assume(not np.array_equal(spec.x0, spec.x_star))
    runs = _run_both(
        spec,
        len(events),
        validation=lambda model, clock: _EventValidation(model, clock, events),
        before_step=_events_hook(events),
        optimizer=torch.optim.SGD,
        interval=interval,
        patience=patience,
    )
    _assert_same_run(*runs)


@pytest.mark.parametrize(
    ("events", "stages", "skipped"),
    [
        (["train", "zero_update", "train"], 2, 1),
        (["train", "nan_validation", "train"], 2, 1),
        (["train", "inf_gradient", "train", "train"], 1, 3),  # NaN from then on
    ],
    ids=["zero-update", "nan-validation-loss", "inf-update"],
)
def test_reference_skips_stages_by_hand(events, stages, skipped):
    reference = _run(
        ReferenceFastForward,
        fixed_quadratic(),
        len(events),
        validation=lambda model, clock: _EventValidation(model, clock, events),
        before_step=_events_hook(events),
        optimizer=torch.optim.SGD,
        interval=1,
        patience=1,
        min_improvement=0.0,
    )
    assert (reference.stats.stages, reference.stats.skipped_stages) == (stages, skipped)
    assert reference.active  # a skipped stage is no failed stage


@pytest.mark.parametrize(("min_improvement", "tau"), [(None, 0), (1e-4, 1), (0.0, 1)])
def test_a_stage_gaining_less_than_min_improvement_stays_at_w_n(min_improvement, tau):
    """L_0 = 1, L_1 = 0.9995 (a 0.05% gain), L_2 = 0.9999: the default margin is 0.1%."""
    model = Quadratic(fixed_quadratic())
    losses = iter([1.0, 0.9995, 0.9999])
    options = {} if min_improvement is None else {"min_improvement": min_improvement}
    adam = torch.optim.Adam([model.x], lr=0.01)
    ff = paper_fast_forward(adam, model, lambda: next(losses), 1, search="linear", **options)
    model().backward()
    ff.step()
    after_step = ff.stats.history[0]
    assert (after_step.tau, after_step.evaluations) == (tau, 3)
    assert after_step.loss_after == (1.0 if tau == 0 else 0.9995)
