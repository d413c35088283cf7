"""``delta_span="interval"``: Δ over the whole interval, its snapshot, and its checkpoint.

The schedule under every option is checked against ``ReferenceFastForward`` in test_schedule.py,
and the resume over the base-optimizer table in test_base_optimizers.py; here: the closed form on
quadratics, the snapshot's life (skipped stages, a checkpoint with and without it) and the
checks on bad input.
"""

from __future__ import annotations

import copy
import enum
import json
import logging

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    ReferenceFastForward,
    bitwise_equal,
    integer_minimiser,
    paper_fast_forward,
    quadratic_along_ray,
    without_timings,
)
from strategies import Quadratic, dcp_state, fixed_quadratic, quadratics, through_disk, train

from fastforward import FastForward, StageRecord
from fastforward.dcp import WrapperState


def _make(spec=None, *, lr=0.02, **options):
    model = Quadratic(spec or fixed_quadratic())
    options = {"interval": 4, "delta_span": "interval", "patience": None, **options}
    return model, paper_fast_forward(torch.optim.Adam([model.x], lr=lr), model, model, **options)


@given(
    pair=st.integers(1, 4).flatmap(lambda d: st.tuples(quadratics(dim=d), quadratics(dim=d))),
    interval=st.integers(1, 6),
    lr=st.floats(1e-3, 0.1),
)
def test_the_first_stage_lands_on_the_closed_form_minimiser_along_the_intervals_update(
    pair, interval, lr
):
    """SGD on one quadratic, validation on another: ``τ*`` along ``Δ = W_n - W_0`` is exact."""
    spec, val = pair
    model = Quadratic(spec)

    def val_loss():
        e = model.x.detach().numpy() - val.x_star
        return 0.5 * e @ val.a @ e

    sgd = torch.optim.SGD([model.x], lr=lr)
    ff = paper_fast_forward(sgd, model, val_loss, interval, delta_span="interval", search="linear",
                     min_improvement=0.0, max_tau=200)  # fmt: skip
    bare_model = copy.deepcopy(model)
    train(bare_model, torch.optim.SGD([bare_model.x], lr=lr), interval)
    w_s, w_n = spec.x0, bare_model.x.detach().numpy()  # W before step 1, W_n before the stage
    _, b, c = quadratic_along_ray(val.a, val.x_star, w_n, w_n - w_s)
    assume(c > 1e-12)
    threshold = 0.5 - b / c  # φ(τ) < φ(τ-1) iff τ < threshold
    assume(abs(threshold - round(threshold)) > 1e-6)  # no tie for rounding to break

    train(model, ff, interval)

    (record,) = ff.stats.history
    assert (record.step, record.delta_steps) == (interval, interval)
    assert record.tau == integer_minimiser(b, c, 200)
    assert ff.stats.simulated_steps == record.tau * interval
    expected = torch.from_numpy(w_n).add(torch.from_numpy(w_n - w_s), alpha=record.tau)
    torch.testing.assert_close(model.x.detach(), expected, rtol=1e-12, atol=1e-12)


def test_reference_takes_its_copies_at_the_intervals_first_steps_by_hand():
    """interval 3, warmup 1: copies before steps 2, 5, 8; stages after 4, 7, 10 (τ in 3s)."""
    model = Quadratic(fixed_quadratic())
    copies = []
    reference = ReferenceFastForward(
        torch.optim.SGD([model.x], lr=0.01), model, model, 3, warmup=1, delta_span="interval"
    )
    for n in range(1, 11):
        model().backward()
        reference.step()
        reference.zero_grad()
        if reference.interval_start is not None and reference.interval_start[0] == n:
            copies.append(n)
    assert copies == [2, 5, 8]
    assert [r.step for r in reference.stats.history] == [4, 7, 10]
    assert all(r.delta_steps == 3 and r.tau > 0 for r in reference.stats.history)
    assert reference.stats.simulated_steps == 3 * sum(r.tau for r in reference.stats.history)


def test_a_stage_whose_interval_began_while_disabled_is_skipped_and_the_next_runs(caplog):
    model, ff = _make()
    ff.enabled = False
    train(model, ff, 1)  # step 1 opens the interval: no snapshot while disabled
    ff.enabled = True
    with caplog.at_level(logging.INFO, logger="fastforward"):
        train(model, ff, 3)
    assert (ff.stats.stages, ff.stats.skipped_stages, ff.stats.evaluations) == (0, 1, 0)
    assert "no stage after step 4: no snapshot of W from the start of the interval" in caplog.text
    train(model, ff, 4)
    assert [r.step for r in ff.stats.history] == [8]


def test_a_stage_whose_trainable_parameters_changed_during_the_interval_is_skipped(caplog):
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    def loss():
        return torch.nn.functional.mse_loss(model(x), y)

    ff = paper_fast_forward(torch.optim.Adam(model.parameters(), lr=0.01), model, loss, 3,
                     delta_span="interval")  # fmt: skip
    caplog.set_level(logging.INFO, logger="fastforward")
    for n in range(1, 7):
        if n == 2:
            model.bias.requires_grad_(False)  # the snapshot of step 1 holds it, the stage not
        loss().backward()
        ff.step()
        ff.zero_grad()
    assert "no stage after step 3: the trainable parameters changed" in caplog.text
    assert ff.stats.skipped_stages == 1
    assert [r.step for r in ff.stats.history] == [6]


class _ThreeTensors(torch.nn.Module):
    """``weight`` and ``bias`` train; ``extra`` is frozen until a test unfreezes it."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(
            torch.randn(3, 1, dtype=torch.float64, generator=generator)
        )
        self.bias = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.extra = torch.nn.Parameter(torch.zeros(3, 1, dtype=torch.float64), requires_grad=False)
        self.x = torch.randn(16, 3, dtype=torch.float64, generator=generator)
        self.y = torch.randn(16, 1, dtype=torch.float64, generator=generator)

    def forward(self) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.x @ (self.weight + self.extra) + self.bias, self.y)


def _swap_trainable(model, ff):
    model.weight.requires_grad_(False)
    model.extra.requires_grad_(True)


def _unfreeze_into_a_new_group(model, ff):
    model.extra.requires_grad_(True)
    ff.add_param_group({"params": [model.extra], "lr": 0.005})


@pytest.mark.parametrize("change", [_swap_trainable, _unfreeze_into_a_new_group])
@pytest.mark.parametrize("saved_at", [2, 3, 4])
def test_resume_after_the_trainable_tensors_changed_inside_an_interval_is_bitwise(
    change, saved_at, caplog
):
    """The snapshot of step 1 no longer fits after step 2's change: skipped live and resumed."""

    def make():
        model = _ThreeTensors()
        params = [model.weight, model.bias]
        if change is _swap_trainable:
            params.append(model.extra)  # in the optimizer, frozen until the change
        ff = paper_fast_forward(torch.optim.Adam(params, lr=0.01), model, model, 3,
                         delta_span="interval", patience=None, min_improvement=0.0)  # fmt: skip
        return model, ff

    def steps(model, ff, first, last):
        for n in range(first, last + 1):
            if n == 2:
                change(model, ff)
            ff.zero_grad()
            model().backward()
            ff.step()

    model, ff = make()
    caplog.set_level(logging.INFO, logger="fastforward")
    steps(model, ff, 1, 9)
    assert "no stage after step 3: the trainable parameters changed" in caplog.text
    assert [r.step for r in ff.stats.history] == [6, 9]

    first_model, first = make()
    steps(first_model, first, 1, saved_at)
    checkpoint = through_disk({"model": first_model.state_dict(), "optim": first.state_dict()})
    assert ("interval_snapshot" in checkpoint["optim"]["fastforward"]) == (saved_at == 4)
    resumed_model, resumed = make()
    change(resumed_model, resumed)  # the run is rebuilt as it was when it was saved
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optim"])
    steps(resumed_model, resumed, saved_at + 1, 9)
    for name, p in resumed_model.named_parameters():
        assert bitwise_equal(p.detach(), getattr(model, name).detach()), name
    assert without_timings(resumed.stats) == without_timings(ff.stats)


@given(saved_at=st.integers(0, 13), more=st.integers(1, 10))
def test_resume_through_disk_is_bitwise_at_every_point_of_the_interval(saved_at, more):
    model, ff = _make()
    train(model, ff, saved_at + more)

    first_model, first = _make()
    train(first_model, first, saved_at)
    checkpoint = through_disk({"model": first_model.state_dict(), "optim": first.state_dict()})
    inside = saved_at % 4 != 0
    assert ("interval_snapshot" in checkpoint["optim"]["fastforward"]) == inside
    resumed_model, resumed = _make(fixed_quadratic(seed=1))
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optim"])
    train(resumed_model, resumed, more)

    assert bitwise_equal(resumed_model.x.detach(), model.x.detach())
    assert without_timings(resumed.stats) == without_timings(ff.stats)


@pytest.mark.parametrize("saved_at", [4, 5, 6, 7])
def test_resume_through_dcp_is_bitwise_at_every_point_of_the_interval(saved_at, tmp_path):
    """The recipe of docs/integrations.md, in one process: the snapshot travels as tensors."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model, ff = _make()
    train(model, ff, 12)

    first_model, first = _make()
    train(first_model, first, saved_at)
    resumed_model, resumed = _make(fixed_quadratic(seed=1))
    with warnings.catch_warnings():  # DCP says that it saves in a single process
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save(dcp_state(first_model, first), checkpoint_id=tmp_path, no_dist=True)
        state = dcp_state(resumed_model, resumed)
        dcp.load(state, checkpoint_id=tmp_path, no_dist=True)
    set_model_state_dict(resumed_model, state["model"])
    set_optimizer_state_dict(resumed_model, resumed, state["optim"])
    assert (resumed._buffers.taken_at is not None) == (saved_at % 4 != 0)
    train(resumed_model, resumed, 12 - saved_at)

    assert bitwise_equal(resumed_model.x.detach(), model.x.detach())
    assert without_timings(resumed.stats) == without_timings(ff.stats)
    assert resumed.stats.skipped_stages == 0


def test_a_checkpoint_without_the_snapshot_skips_that_intervals_stage_only(caplog):
    """As after loading the wrapper's JSON entry alone: the snapshot is not in it."""
    caplog.set_level(logging.INFO, logger="fastforward")
    model, ff = _make()
    train(model, ff, 6)  # half way through the second interval
    entry = json.loads(WrapperState(ff).state_dict()["json"])
    assert "interval_snapshot" not in entry
    fresh_model, fresh = _make()
    fresh_model.load_state_dict(model.state_dict())
    train(fresh_model, fresh, 2)  # its own snapshot, of another run: must not be used
    fresh.optimizer.load_state_dict(ff.optimizer.state_dict())
    fresh.load_wrapper_state_dict(entry)
    train(fresh_model, fresh, 6)
    assert [r.step for r in fresh.stats.history] == [4, 12]
    assert fresh.stats.skipped_stages == 1
    assert "no stage after step 8: no snapshot of W" in caplog.text


def _corrupt_tensors(entry, make):
    entry["interval_snapshot"]["tensors"] = make(entry["interval_snapshot"]["tensors"])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda e: _corrupt_tensors(e, lambda ts: ts + ts), "holds 2 tensors for 1 trainable"),
        (lambda e: _corrupt_tensors(e, lambda ts: [ts[0][:2]]), r"of shape \(2,\)"),
        (lambda e: _corrupt_tensors(e, lambda ts: [ts[0].float()]), "torch.float32 tensor"),
        (lambda e: _corrupt_tensors(e, lambda ts: ts[0]), "must be a list of tensors"),
        (lambda e: e["interval_snapshot"].update(step=99), "step 99 is after the last saved"),
        (lambda e: e["interval_snapshot"].update(step=0), "must be >= 1"),
        (lambda e: e["hyperparameters"].update(delta_span="step"), "only with delta_span="),
    ],
)
def test_a_rejected_snapshot_changes_nothing(corrupt, message):
    model, ff = _make()
    train(model, ff, 5)
    saved = ff.state_dict()
    corrupt(saved["fastforward"])
    _, fresh = _make()
    before = repr(fresh)
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(saved)
    assert not fresh.optimizer.state
    assert repr(fresh) == before
    assert fresh.stats.optimizer_steps == 0


class _Span(str, enum.Enum):
    INTERVAL = "interval"


def test_delta_span_is_checked_and_stored_plain():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x])
    with pytest.raises(ValueError, match=r"delta_span must be one of \('step', 'interval'\)"):
        paper_fast_forward(adam, model, model, delta_span="last")
    with pytest.raises(ValueError, match=r"delta_span='interval' \(the default\) cannot be"):
        paper_fast_forward(adam, model, model, delta_span="interval", adaptive_interval=(2, 12))
    with pytest.raises(ValueError, match="pass delta_span='step' with adaptive_interval"):
        FastForward(adam, model, model, adaptive_interval=(2, 12))
    ff = paper_fast_forward(adam, model, model, delta_span=_Span.INTERVAL)
    assert type(ff.delta_span) is str
    assert ff.config.delta_steps == 6
    assert "delta_span='interval'" in repr(ff)


@pytest.mark.parametrize(("ratio", "taus"), [(2.5, [2, 2]), (1.0, [1, 1]), (1.9, [1, 1])])
def test_max_tau_ratio_caps_the_steps_a_stage_simulates_as_in_step_mode(ratio, taus):
    """interval 4: at most floor(ratio * 4) steps, so as many whole intervals as fit."""
    model, ff = _make(lr=1e-3, max_tau_ratio=ratio, search="linear", min_improvement=0.0)
    train(model, ff, 8)
    assert [r.tau for r in ff.stats.history] == taus  # far from the minimum: the cap binds
    assert all(r.tau * r.delta_steps <= ratio * 4 for r in ff.stats.history)


@pytest.mark.parametrize("ratio", [0.5, 0.999])
def test_a_max_tau_ratio_below_one_interval_is_refused(ratio):
    model, _ = _make()
    adam = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"max_tau_ratio must be at least 1 with delta_span="):
        paper_fast_forward(adam, model, model, 4, delta_span="interval", max_tau_ratio=ratio)


def test_records_saved_before_delta_steps_existed_load_as_one_step():
    model, ff = _make(delta_span="step")
    train(model, ff, 4)
    entry = ff.wrapper_state_dict()
    del entry["hyperparameters"]["delta_span"]
    for record in entry["stats"]["history"]:
        del record["delta_steps"]
    _, fresh = _make()
    fresh.load_wrapper_state_dict(entry)
    assert fresh.delta_span == "step"
    assert fresh.stats.history == ff.stats.history
    assert fresh.stats.history[0].delta_steps == 1
    assert StageRecord(4, 3, 1.0, 0.5, 5, 0.0).delta_steps == 1


@given(spec=quadratics(max_dim=4), cost_ratio=st.floats(0.01, 2.0))
def test_the_default_wrapper_is_bitwise_the_explicit_pair(spec, cost_ratio):
    """Since 0.2 the defaults are Δ over the interval and cost_aware (the pair measured here)."""
    runs = []
    for options in ({}, {"delta_span": "interval", "cost_aware": True}):
        model = Quadratic(spec)
        adam = torch.optim.Adam([model.x], lr=0.02)
        ff = FastForward(adam, model, model, 4, cost_ratio=cost_ratio, **options)
        train(model, ff, 24)
        runs.append((model.x.detach().clone(), ff.stats))
    (default_x, default_stats), (pair_x, pair_stats) = runs
    assert bitwise_equal(default_x, pair_x)
    assert without_timings(default_stats) == without_timings(pair_stats)
    for record in default_stats.history:
        assert record.delta_steps == 4
        assert record.payoff is not None
