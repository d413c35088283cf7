"""cost_aware: a stage must buy more validation loss than training buys with its compute."""

from __future__ import annotations

import dataclasses
import math
import sys
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from reference import bitwise_equal, paper_fast_forward
from strategies import through_disk

from fastforward import FastForward, _payoff
from fastforward._payoff import TrainingClock, stage_payoff

gains = st.floats(0.0, 10.0)
rates = st.floats(-1.0, 1.0)


@given(
    gain=gains,
    evaluations=st.integers(1, 100),
    cost_ratio=st.floats(1e-3, 10.0),
    rate=rates,
)
# The smallest normal rate: gain / rate alone overflows, the quotient is finite.
@example(gain=4.0, evaluations=1, cost_ratio=2.0, rate=sys.float_info.min)
@example(gain=5e-324, evaluations=100, cost_ratio=10.0, rate=1.0)  # rounds to zero
def test_payoff_is_the_exact_quotient_rounded_once(gain, evaluations, cost_ratio, rate):
    payoff = stage_payoff(gain, evaluations, cost_ratio, rate)
    if gain == 0:
        assert payoff == 0
    elif rate <= 0:
        assert payoff == math.inf
    else:  # against exact rational arithmetic: subnormal rates and gains included
        training_would_buy = Fraction(rate) * evaluations * Fraction(cost_ratio)
        exact = Fraction(gain) / training_would_buy
        if exact > sys.float_info.max:
            assert payoff == math.inf
        else:
            assert payoff == float(exact)
        # Above 1 exactly when the stage bought more than training would have.
        assume(abs(exact - 1) > Fraction(1, 10**9))
        assert (payoff >= 1) == (Fraction(gain) > training_would_buy)


class Line(torch.nn.Module):
    """One parameter ``x``; training pushes it right at a constant rate (loss ``-x``), and the
    validation loss is ``curvature * (x - target)²``: a scripted loss along every Δ."""

    def __init__(self, target: float, curvature: float) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.target, self.curvature = target, curvature

    def validation(self) -> float:
        return self.curvature * (self.x.item() - self.target) ** 2


# The rest of a scripted run on a Line: its curvature, SGD's rate, a pass's cost, the interval.
LINE_RUNS = dict(
    curvature=st.floats(0.1, 10.0),
    lr=st.floats(0.01, 0.5),
    cost_ratio=st.floats(0.01, 5.0),
    interval=st.integers(2, 8),
)


def _train(ff, model, steps):
    for _ in range(steps):
        ff.zero_grad()
        (-model.x).backward()
        ff.step()


@given(target=st.floats(0.5, 50.0), **LINE_RUNS)
def test_each_payoff_follows_the_rule_and_no_stage_runs_after_stepping_aside(
    target, curvature, lr, cost_ratio, interval
):
    model = Line(target, curvature)
    ff = paper_fast_forward(
        torch.optim.SGD(model.parameters(), lr=lr),
        model,
        model.validation,
        interval,
        patience=None,
        min_improvement=0.0,
        cost_aware=True,
        cost_ratio=cost_ratio,
    )
    _train(ff, model, 1)
    start = model.curvature * model.target**2  # the reference pass, at x = 0 before step 1
    assert ff.stats.evaluations == 1
    _train(ff, model, 12 * interval - 1)

    reference_step, reference_loss, peak = 0, start, 0.0
    for record in ff.stats.history:
        pace = (reference_loss - record.loss_before) / (record.step - reference_step)
        peak = max(peak, pace)  # the fastest pace so far, not the last interval's
        expected = stage_payoff(
            record.loss_before - record.loss_after, record.evaluations, cost_ratio, peak
        )
        assert record.payoff == expected
        assert record.cost_ratio == cost_ratio
        reference_step, reference_loss = record.step, record.loss_after
    paid = [record.payoff >= 1 for record in ff.stats.history]
    if all(paid):
        assert ff.stats.gave_up_at_step is None
        assert ff.stats.stages == 12
    else:
        # The first stage that did not pay is the last one: then the bare optimizer, for good.
        assert paid.index(False) == len(paid) - 1
        assert ff.stats.gave_up_because == "payoff"
        assert ff.stats.gave_up_at_step == ff.stats.history[-1].step
        assert not ff.active
        ff.enabled = True
        bare_x = model.x.detach().clone().requires_grad_()
        bare = torch.optim.SGD([bare_x], lr=lr)
        evaluations = ff.stats.evaluations
        _train(ff, model, 3 * interval)
        for _ in range(3 * interval):
            bare.zero_grad()
            (-bare_x).backward()
            bare.step()
        assert ff.stats.evaluations == evaluations
        assert bitwise_equal(model.x.detach(), bare_x.detach())


def _interval_pair(model, lr, interval, closure=None, **options):
    """0.2's default, Δ over the interval and ``cost_aware``, with a given cost ratio."""
    defaults = {"delta_span": "interval", "cost_aware": True, "cost_ratio": 0.5}
    options = {**defaults, "patience": None, "min_improvement": 0.0, **options}
    sgd = torch.optim.SGD(model.parameters(), lr=lr)
    return FastForward(sgd, model, closure or model.validation, interval, **options)


@given(target=st.floats(0.05, 50.0), **LINE_RUNS)
def test_with_delta_over_the_interval_the_first_stage_measures_its_reference_only_if_it_gains(
    target, curvature, lr, cost_ratio, interval
):
    """No pass before the first stage; one more in it, at ``W_n - Δ`` (the interval's start,
    ``x = 0``), exactly when it leaves ``W_n``; charged to the rule, not the stage; and the same
    landing, bitwise, as the stage without the rule."""
    model, bare = Line(target, curvature), Line(target, curvature)
    ff = _interval_pair(model, lr, interval, cost_ratio=cost_ratio)
    without = _interval_pair(bare, lr, interval, cost_aware=False)
    _train(ff, model, interval - 1)
    assert ff.stats.evaluations == 0
    _train(ff, model, 1)
    _train(without, bare, interval)
    first, plain = ff.stats.history[0], without.stats.history[0]
    assert first.tau == plain.tau
    assert bitwise_equal(model.x.detach(), bare.x.detach())
    gained = first.tau > 0
    assert first.evaluations == plain.evaluations + gained == ff.stats.evaluations

    _train(ff, model, 12 * interval)
    assert ff.stats.evaluations == sum(record.evaluations for record in ff.stats.history)
    reference_step, reference_loss, peak = 0, curvature * target**2, 0.0
    for index, record in enumerate(ff.stats.history):
        pace = (reference_loss - record.loss_before) / (record.step - reference_step)
        if index > 0 or gained:
            peak = max(peak, pace)
        charged = record.evaluations - (index == 0 and gained)
        gain = record.loss_before - record.loss_after
        assert record.payoff == stage_payoff(gain, charged, cost_ratio, peak)
        reference_step, reference_loss = record.step, record.loss_after
    paid = [record.payoff >= 1 for record in ff.stats.history]
    if all(paid):
        assert ff.stats.stages == 13
    else:  # stepped aside at the first stage that did not pay
        assert paid.index(False) == len(paid) - 1


def test_a_failure_at_the_interval_start_pass_leaves_the_stage_s_landing_point():
    """The reference's pass comes after the search: if it raises, the model is where the stage
    landed, bitwise, and the next stage measures its reference again, from there."""
    model, clean = Line(target=40.0, curvature=1.0), Line(target=40.0, curvature=1.0)
    reference = _interval_pair(clean, 0.1, 4, max_tau=2)  # short stages: the next one gains too
    _train(reference, clean, 4)
    assert reference.stats.history[0].tau > 0
    landing_loss = clean.validation()
    calls = [0]

    def failing_last() -> float:
        calls[0] += 1
        if calls[0] == reference.stats.evaluations:
            raise RuntimeError("validation data went away")
        return model.validation()

    ff = _interval_pair(model, 0.1, 4, failing_last, max_tau=2)
    _train(ff, model, 3)
    with pytest.raises(RuntimeError, match="went away"):
        _train(ff, model, 1)
    assert bitwise_equal(model.x.detach(), clean.x.detach())
    assert ff.stats.stages == 0
    assert ff._cost.reference is None
    _train(ff, model, 4)
    (second,) = ff.stats.history
    assert second.tau > 0
    pace = (landing_loss - second.loss_before) / 4  # from the interval's start: the landing
    gain = second.loss_before - second.loss_after
    assert second.payoff == stage_payoff(gain, second.evaluations - 1, 0.5, pace)


def test_a_nan_at_the_interval_start_leaves_the_stage_unjudged_and_the_next_one_judged():
    """A reference that is not a number judges nothing (no payoff, no stepping aside, no pace
    kept); the landing is the stage's, bitwise, and the next stage is judged from it."""
    model, clean = Line(target=40.0, curvature=1.0), Line(target=40.0, curvature=1.0)
    reference = _interval_pair(clean, 0.1, 4, max_tau=2)
    _train(reference, clean, 8)
    first, following = reference.stats.history
    assert first.tau > 0
    assert following.tau > 0
    calls = [0]

    def nan_at_the_start() -> float:
        calls[0] += 1
        return math.nan if calls[0] == first.evaluations else model.validation()

    ff = _interval_pair(model, 0.1, 4, nan_at_the_start, max_tau=2)
    _train(ff, model, 4)
    assert ff.stats.history[0].payoff is None
    assert ff.active
    _train(ff, model, 4)
    assert bitwise_equal(model.x.detach(), clean.x.detach())
    second = ff.stats.history[1]
    pace = (first.loss_after - second.loss_before) / 4  # the first stage's pace is unknown
    gain = second.loss_before - second.loss_after
    assert second.payoff == stage_payoff(gain, second.evaluations, 0.5, pace)
    assert second.payoff != following.payoff  # the clean run judged it at the first's pace


def test_a_gain_the_margin_turns_down_measures_no_reference():
    """``min_improvement`` rejects the best point: the stage stays at ``W_n``, gained nothing
    (payoff 0) and spent no pass at the interval's start."""
    model, bare = Line(target=0.60004, curvature=1.0), Line(target=0.60004, curvature=1.0)
    ff = _interval_pair(model, 0.1, 4, min_improvement=1e-3)
    without = _interval_pair(bare, 0.1, 4, min_improvement=1e-3, cost_aware=False)
    _train(ff, model, 4)
    _train(without, bare, 4)
    (record,) = ff.stats.history
    assert (record.tau, record.rejected_tau) == (0, 1)
    assert record.evaluations == without.stats.history[0].evaluations
    assert record.payoff == 0.0
    assert ff.stats.gave_up_because == "payoff"


def test_a_checkpoint_inside_the_first_interval_resumes_bitwise():
    """Saved before the first stage (no reference yet, the interval's snapshot held): the
    resumed run measures the same reference and takes the same decisions, bit for bit."""
    model = Line(target=40.0, curvature=1.0)
    ff = _interval_pair(model, 0.1, 4, max_tau=2)
    _train(ff, model, 2)
    saved = through_disk({"model": model.state_dict(), "optim": ff.state_dict()})
    assert saved["optim"]["fastforward"]["reference"] is None
    _train(ff, model, 14)

    other = Line(target=40.0, curvature=1.0)
    other.load_state_dict(saved["model"])
    resumed = _interval_pair(other, 0.1, 4, max_tau=2)
    resumed.load_state_dict(saved["optim"])
    _train(resumed, other, 14)
    assert len(ff.stats.history) > 1
    assert [r.payoff for r in resumed.stats.history] == [r.payoff for r in ff.stats.history]
    assert resumed.stats.evaluations == ff.stats.evaluations
    assert bitwise_equal(other.x.detach(), model.x.detach())


def test_stages_that_pay_go_on_and_a_stage_that_does_not_steps_aside():
    """Far from the target a stage walks a long way for a few passes; close to it, it cannot."""
    model = Line(target=40.0, curvature=1.0)
    ff = paper_fast_forward(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        model.validation,
        4,
        cost_aware=True,
        cost_ratio=2.0,
    )
    _train(ff, model, 40)
    first, last = ff.stats.history[0], ff.stats.history[-1]
    assert first.tau > 100
    assert first.payoff > 1
    assert last.payoff < 1
    assert ff.stats.gave_up_because == "payoff"


def test_the_rule_is_off_by_default_and_records_nothing():
    model = Line(target=40.0, curvature=1.0)
    ff = paper_fast_forward(torch.optim.SGD(model.parameters(), lr=0.1), model, model.validation, 4)
    _train(ff, model, 8)
    assert ff.stats.evaluations == sum(r.evaluations for r in ff.stats.history)
    assert all(record.payoff is None for record in ff.stats.history)


class _FakeTime:
    """A wall clock that moves only when told: a training iteration or a validation pass."""

    def __init__(self, monkeypatch, iteration: float, validation_pass: float) -> None:
        self.now, self.iteration, self.validation_pass = 0.0, iteration, validation_pass
        monkeypatch.setattr("fastforward._payoff.time.perf_counter", lambda: self.now)

    def train(self, ff, model, steps):
        for _ in range(steps):
            self.now += self.iteration  # forward, backward, data: before step() is called
            ff.zero_grad()
            (-model.x).backward()
            ff.step()

    def validation(self, model):
        def closure():
            self.now += self.validation_pass
            return model.validation()

        return closure


def _measuring(model, closure, interval=4, warmup=0, **options):
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    return paper_fast_forward(
        sgd, model, closure, interval, warmup=warmup, cost_aware=True, **options
    )


@pytest.mark.parametrize("delta_span", ["step", "interval"])
@pytest.mark.parametrize("warmup", [0, 1, 3])
@pytest.mark.parametrize(("iteration", "validation_pass"), [(1.0, 1.0), (2.0, 0.5), (0.25, 4.0)])
def test_without_a_cost_ratio_the_measured_times_set_it_exactly(
    monkeypatch, warmup, iteration, validation_pass, delta_span
):
    """Each stage's payoff uses the true ratio of a pass's time to an iteration's; the
    reference, a pass before the interval (step Δ) or at its start (interval Δ), is the
    same point, charged to no stage."""
    clock = _FakeTime(monkeypatch, iteration, validation_pass)
    model = Line(target=40.0, curvature=1.0)
    ff = _measuring(
        model, clock.validation(model), warmup=warmup, interval=4, delta_span=delta_span
    )
    clock.train(ff, model, warmup + 12)
    assert ff.stats.history
    x = 0.0
    for _ in range(warmup):
        x += 0.1  # SGD on the loss -x
    reference_step, reference_loss = warmup, model.curvature * (x - model.target) ** 2
    passes_in_stages = ff.stats.evaluations - (delta_span == "step")
    assert passes_in_stages == sum(record.evaluations for record in ff.stats.history)
    for index, record in enumerate(ff.stats.history):
        rate = (reference_loss - record.loss_before) / (record.step - reference_step)
        gain = record.loss_before - record.loss_after
        ratio = validation_pass / iteration
        charged = record.evaluations - (index == 0 and delta_span == "interval")
        assert record.cost_ratio == ratio
        assert record.payoff == stage_payoff(gain, charged, ratio, rate)
        reference_step, reference_loss = record.step, record.loss_after


def test_training_clock_times_whole_iterations_between_validation_blocks(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("fastforward._payoff.time.perf_counter", lambda: now[0])
    clock = TrainingClock()
    clock.stop(0)  # no segment yet: nothing to end
    assert clock.seconds_per_step is None
    assert not clock.running
    clock.start(1)
    now[0] += 6.0  # iterations 2, 3, 4
    clock.stop(4)
    assert not clock.running
    now[0] += 100.0  # a stage: not training
    clock.start(4)
    now[0] += 2.0  # iteration 5
    clock.stop(5)
    assert (clock.seconds, clock.steps, clock.seconds_per_step) == (8.0, 4, 2.0)


def test_a_measured_ratio_goes_on_after_a_resume_and_decides_as_before(monkeypatch):
    """Times in powers of two: every sum exact, so the payoffs must be equal, not close."""
    clock = _FakeTime(monkeypatch, iteration=0.5, validation_pass=0.25)
    model = Line(target=40.0, curvature=1.0)
    ff = _measuring(model, clock.validation(model), max_tau=8)  # a long way to go, in strides
    clock.train(ff, model, 6)
    saved = through_disk({"model": model.state_dict(), "optim": ff.state_dict()})
    assert saved["optim"]["fastforward"]["training_clock"] == [1.5, 3]  # iterations 2, 3, 4
    clock.train(ff, model, 30)

    other = Line(40.0, 1.0)
    other.load_state_dict(saved["model"])
    resumed = _measuring(other, clock.validation(other), max_tau=8)
    resumed.load_state_dict(saved["optim"])
    clock.train(resumed, other, 30)
    payoffs = [r.payoff for r in ff.stats.history]
    assert len(payoffs) > 3
    assert None not in payoffs
    assert [r.payoff for r in resumed.stats.history] == payoffs
    assert resumed.stats.gave_up_at_step == ff.stats.gave_up_at_step
    assert bitwise_equal(other.x.detach(), model.x.detach())


def test_checkpoint_keeps_the_rule_and_its_reference():
    model = Line(target=40.0, curvature=1.0)
    make = lambda m: paper_fast_forward(  # noqa: E731
        torch.optim.SGD(m.parameters(), lr=0.1),
        m,
        m.validation,
        4,
        cost_aware=True,
        cost_ratio=0.5,
    )
    ff = make(model)
    _train(ff, model, 6)
    state = through_disk(ff.state_dict())
    other = Line(40.0, 1.0)
    other.load_state_dict(model.state_dict())
    resumed = make(other)
    resumed.load_state_dict(state)
    assert resumed._cost.reference == ff._cost.reference
    assert resumed._cost.peak_pace == ff._cost.peak_pace > 0
    _train(ff, model, 10)
    _train(resumed, other, 10)
    timeless = lambda records: [dataclasses.replace(r, seconds=0.0) for r in records]  # noqa: E731
    assert timeless(resumed.stats.history) == timeless(ff.stats.history)
    assert ff.stats.gave_up_because == resumed.stats.gave_up_because == "payoff"
    assert bitwise_equal(other.x.detach(), model.x.detach())


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("peak_pace", -1.0),
        ("peak_pace", math.nan),
        ("peak_pace", "0.5"),
        ("peak_pace", True),
        ("training_clock", [-1.0, 3]),
        ("training_clock", [1.0]),
        ("reference", [2, "4.0"]),
    ],
)
def test_a_malformed_entry_of_the_rule_is_refused_naming_it(key, bad):
    model = Line(target=40.0, curvature=1.0)
    make = lambda m: paper_fast_forward(  # noqa: E731
        torch.optim.SGD(m.parameters(), lr=0.1), m, m.validation, 4, cost_aware=True
    )
    ff = make(model)
    _train(ff, model, 6)
    state = ff.state_dict()
    state["fastforward"][key] = bad
    fresh = make(Line(40.0, 1.0))
    with pytest.raises(ValueError, match=key):
        fresh.load_state_dict(state)
    assert fresh.stats.optimizer_steps == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_cost_ratio_must_be_finite_and_positive(bad):
    model = Line(1.0, 1.0)
    with pytest.raises(ValueError, match="cost_ratio"):
        paper_fast_forward(torch.optim.SGD(model.parameters(), lr=0.1), model, model.validation,
                    cost_aware=True, cost_ratio=bad)  # fmt: skip


def test_a_rotating_validation_closure_is_refused_with_cost_aware():
    """The payoff compares the loss at the last landing with L_0: both must be on one group."""
    from fastforward import validation_closure

    model = torch.nn.Linear(3, 1)
    pool = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(4)]

    def mse(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    adam = torch.optim.Adam(model.parameters())
    rotating = validation_closure(model, pool, mse, rotate=2)
    with pytest.raises(ValueError, match="val_closure takes `stage`"):
        paper_fast_forward(adam, model, rotating, cost_aware=True)
    fixed = validation_closure(model, pool, mse)
    assert paper_fast_forward(adam, model, fixed, cost_aware=True).cost_aware


@pytest.mark.parametrize(
    ("payoffs", "forgiven"),
    [
        ([0.5], False),  # an unpaid first stage
        ([2.0, 0.5], True),  # after a paid one
        ([2.0, 0.5, 0.0], False),  # two in a row
        ([None, 0.5], False),  # the one before was not judged
        ([1.0, 0.99], True),  # exactly 1 pays
    ],
)
def test_the_benchmarks_forgive_switch_forgives_one_unpaid_stage_after_a_paid_one(
    monkeypatch, payoffs, forgiven
):
    assert not _payoff.forgiven(payoffs)  # off: the library's rule
    monkeypatch.setattr(_payoff, "FORGIVE", True)
    assert _payoff.forgiven(payoffs) is forgiven


def test_no_reference_pass_while_a_pass_s_cost_cannot_be_measured(monkeypatch):
    """Measured cost, first stage after step 1 (``interval=1``): no training has been timed, so
    the stage cannot be judged and spends no pass on a reference; the next one is judged."""
    clock = _FakeTime(monkeypatch, iteration=1.0, validation_pass=0.5)
    model, bare = Line(target=40.0, curvature=1.0), Line(target=40.0, curvature=1.0)
    ff = _measuring(model, clock.validation(model), interval=1, delta_span="interval")
    plain = _interval_pair(bare, 0.1, 1, cost_aware=False, cost_ratio=None)
    clock.train(ff, model, 1)
    _train(plain, bare, 1)
    first = ff.stats.history[0]
    assert first.tau > 0
    assert first.payoff is None
    assert first.evaluations == plain.stats.history[0].evaluations
    clock.train(ff, model, 1)
    assert ff.stats.history[1].payoff is not None
