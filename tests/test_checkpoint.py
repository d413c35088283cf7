"""state_dict round trips: resume is bitwise, and the dict is plain data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import bitwise_equal, paper_fast_forward
from strategies import Quadratic, fixed_quadratic, quadratics, through_disk, train

from fastforward import FastForward


def _make(
    spec,
    *,
    interval=3,
    warmup=0,
    patience=None,
    search="linear",
    adaptive_interval=None,
    max_tau_ratio=None,
):
    model = Quadratic(spec)
    adam = torch.optim.Adam([model.x], lr=0.02)
    return model, paper_fast_forward(
        adam,
        model,
        model,
        interval,
        warmup=warmup,
        patience=patience,
        search=search,
        adaptive_interval=adaptive_interval,
        max_tau_ratio=max_tau_ratio,
    )


def _comparable(stats):
    totals = stats.to_dict()
    del totals["stage_seconds"]
    for record in totals["history"]:
        del record["seconds"]
    return totals


@given(
    spec=quadratics(),
    saved_at=st.integers(0, 14),
    more=st.integers(1, 14),
    patience=st.sampled_from([None, 1, 2]),
    search=st.sampled_from(["linear", "warm_start"]),
    adaptive=st.sampled_from([None, (1, 12)]),
    max_tau_ratio=st.sampled_from([None, 1.5]),
)
def test_resume_from_a_checkpoint_is_bitwise_an_uninterrupted_run(
    spec, saved_at, more, patience, search, adaptive, max_tau_ratio
):
    assume(not np.array_equal(spec.x0, spec.x_star))
    options = {
        "patience": patience,
        "search": search,
        "adaptive_interval": adaptive,
        "max_tau_ratio": max_tau_ratio,
    }
    model, ff = _make(spec, **options)
    train(model, ff, saved_at + more)

    first_model, first = _make(spec, **options)
    train(first_model, first, saved_at)
    checkpoint = through_disk({"model": first_model.state_dict(), "optim": first.state_dict()})
    resumed_model, resumed = _make(fixed_quadratic(dim=spec.dim), interval=5, patience=3)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optim"])
    train(resumed_model, resumed, more)

    assert bitwise_equal(resumed_model.x.detach(), model.x.detach())
    assert _comparable(resumed.stats) == _comparable(ff.stats)
    assert (resumed.interval, resumed.patience, resumed.search) == (3, patience, search)
    assert (resumed.adaptive_interval, resumed.current_interval) == (
        adaptive,
        ff.current_interval,
    )
    assert resumed.max_tau_ratio == max_tau_ratio
    assert resumed.active == ff.active


def test_state_dict_is_the_base_state_dict_plus_one_plain_entry():
    model, ff = _make(fixed_quadratic())
    train(model, ff, 7)
    state_dict = ff.state_dict()
    base = ff.optimizer.state_dict()
    assert set(state_dict) == set(base) | {"fastforward"}
    assert state_dict["param_groups"] == base["param_groups"]

    def plain(value):
        if isinstance(value, dict):
            return type(value) is dict and all(plain(v) for v in value.values())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))

    assert plain(state_dict["fastforward"])
    assert state_dict["fastforward"]["stats"]["stages"] == 2


def test_loading_does_not_modify_the_callers_dict_and_keeps_containers_shared():
    model, ff = _make(fixed_quadratic())
    train(model, ff, 4)
    state_dict = ff.state_dict()
    keys = set(state_dict)
    ff.load_state_dict(state_dict)
    assert set(state_dict) == keys
    assert ff.param_groups is ff.optimizer.param_groups
    assert ff.state is ff.optimizer.state


def test_bare_optimizer_state_dict_loads_and_restarts_the_schedule(caplog):
    model, ff = _make(fixed_quadratic())
    bare_model = Quadratic(fixed_quadratic())
    bare = torch.optim.Adam([bare_model.x], lr=0.02)
    for _ in range(4):
        bare_model().backward()
        bare.step()
    ff.load_state_dict(bare.state_dict())
    assert "no 'fastforward' entry" in caplog.text
    assert ff.stats.optimizer_steps == 0
    assert torch.equal(ff.state[model.x]["exp_avg"], bare.state[bare_model.x]["exp_avg"])


def test_a_bare_state_loaded_just_after_the_wrapper_state_keeps_it_without_a_warning(caplog):
    """DCP's order: WrapperState inside dcp.load, then set_optimizer_state_dict's bare dict."""
    model, ff = _make(fixed_quadratic())
    train(model, ff, 7)
    saved = ff.state_dict()
    bare = {key: value for key, value in saved.items() if key != "fastforward"}
    resumed_model, resumed = _make(fixed_quadratic())
    resumed.load_wrapper_state_dict(saved["fastforward"])
    resumed.load_state_dict(bare)
    assert "no 'fastforward' entry" not in caplog.text
    assert resumed.stats.optimizer_steps == 7
    train(resumed_model, resumed, 1)
    resumed.load_state_dict(bare)  # a step since: this one is a bare load again
    assert "no 'fastforward' entry" in caplog.text


@given(saved_at=st.integers(0, 20), warmup=st.integers(0, 4))
def test_a_checkpoint_from_before_the_schedule_options_resumes_the_fixed_schedule(saved_at, warmup):
    """Dicts saved before max_tau_ratio, adaptive_interval and the policies existed lack their
    keys: the options were off then, whatever today's defaults."""
    options = {"interval": 5, "warmup": warmup, "search": "parabolic"}
    model, ff = _make(fixed_quadratic(), **options)
    train(model, ff, saved_at + 12)

    first_model, first = _make(fixed_quadratic(), **options)
    train(first_model, first, saved_at)
    old = first.state_dict()
    for key in ("interval_now", "last_scheduled_step"):
        del old["fastforward"][key]
    for key in ("max_tau_ratio", "adaptive_interval", "delta_span", "cost_aware", "cost_ratio"):
        del old["fastforward"]["hyperparameters"][key]
    resumed_model = Quadratic(fixed_quadratic())
    resumed = FastForward(  # today's defaults: Δ over the interval, cost_aware
        torch.optim.Adam([resumed_model.x], lr=0.02), resumed_model, resumed_model, interval=6,
        max_tau_ratio=2.0,
    )  # fmt: skip
    resumed_model.load_state_dict(first_model.state_dict())
    resumed.load_state_dict(through_disk(old))
    train(resumed_model, resumed, 12)

    assert (resumed.adaptive_interval, resumed.max_tau_ratio) == (None, None)
    assert (resumed.delta_span, resumed.cost_aware) == ("step", False)
    assert [r.step for r in resumed.stats.history] == [r.step for r in ff.stats.history]
    assert bitwise_equal(resumed_model.x.detach(), model.x.detach())
    resumed.load_state_dict(resumed.state_dict())  # and its own dict loads again


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda entry: entry.pop("stats"), "malformed: KeyError"),
        (lambda entry: entry["stats"]["history"].append({"tau": 1}), "malformed: TypeError"),
        (lambda entry: entry.pop("enabled"), "malformed: KeyError"),
        (lambda entry: entry.update(interval_now=0), r"interval_now 0 is outside"),
        (lambda entry: entry["hyperparameters"].update(max_tau=0), "max_tau must be >= 1"),
    ],
)
def test_a_rejected_state_dict_changes_nothing(corrupt, message):
    model, ff = _make(fixed_quadratic(), adaptive_interval=(2, 6))
    train(model, ff, 7)
    saved = ff.state_dict()
    corrupt(saved["fastforward"])
    _, fresh = _make(fixed_quadratic(), interval=4, adaptive_interval=(2, 8))
    before = repr(fresh)
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(saved)
    assert not fresh.optimizer.state
    assert fresh.state is fresh.optimizer.state
    assert repr(fresh) == before
    assert fresh.stats.optimizer_steps == 0


def test_unknown_format_version_is_rejected():
    _model, ff = _make(fixed_quadratic())
    state_dict = ff.state_dict()
    state_dict["fastforward"]["version"] = 99
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        ff.load_state_dict(state_dict)


def test_state_dict_hooks_registered_on_the_wrapper_run():
    _model, ff = _make(fixed_quadratic())
    calls = []
    ff.register_state_dict_pre_hook(lambda opt: calls.append(("save-pre", opt)))
    ff.register_state_dict_post_hook(lambda opt, sd: calls.append(("save-post", opt)))
    ff.register_load_state_dict_pre_hook(lambda opt, sd: calls.append(("load-pre", opt)))
    ff.register_load_state_dict_post_hook(lambda opt: calls.append(("load-post", opt)))
    ff.load_state_dict(ff.state_dict())
    assert calls == [("save-pre", ff), ("save-post", ff), ("load-pre", ff), ("load-post", ff)]
