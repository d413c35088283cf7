"""Search strategies of the user's own: the stage keeps its contract whatever they evaluate."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import bitwise_equal, paper_fast_forward
from strategies import Quadratic, fixed_quadratic, through_disk, train

from fastforward import fast_forward_stage
from fastforward.functional import (
    SEARCH_STRATEGIES,
    doubling_search,
    linear_search,
    parabolic_search,
    warm_start_search,
)

BUILT_IN = {
    "linear": linear_search,
    "doubling": doubling_search,
    "parabolic": parabolic_search,
    "warm_start": warm_start_search,
}


def _line(center: float):
    """x = 0.5 + 0.25 τ along Δ, scored by (x - center)²; a second coordinate that Δ keeps."""
    params = [torch.tensor([0.5, -1.0], dtype=torch.float64)]
    delta = [torch.tensor([0.25, 0.0], dtype=torch.float64)]

    def loss():
        return float((params[0][0] - center) ** 2)

    return params, delta, loss


def _point(tau: int) -> torch.Tensor:
    return torch.tensor([0.5, -1.0], dtype=torch.float64).add_(
        torch.tensor([0.25, 0.0], dtype=torch.float64), alpha=tau
    )


def test_the_public_functions_cover_every_name():
    assert set(BUILT_IN) == set(SEARCH_STRATEGIES)


@given(
    name=st.sampled_from(SEARCH_STRATEGIES),
    center=st.floats(-3.0, 200.0),
    start=st.integers(1, 500),
)
def test_each_public_function_is_the_strategy_of_its_name(name, center, start):
    by_name, delta, loss = _line(center)
    by_function, _, loss_of_function = _line(center)

    def wrapped(ray, max_tau, start):  # a callable the library does not recognise
        BUILT_IN[name](ray, max_tau, start)

    expected = fast_forward_stage(by_name, delta, loss, search=name, start=start, max_tau=500)
    result = fast_forward_stage(
        by_function, delta, loss_of_function, search=wrapped, start=start, max_tau=500
    )
    assert result == expected
    assert bitwise_equal(by_function[0], by_name[0])


@given(
    taus=st.lists(st.integers(0, 60), max_size=12),
    center=st.floats(-3.0, 20.0),
    min_improvement=st.sampled_from([0.0, 1e-3, 0.2]),
)
def test_a_custom_strategy_lands_bitwise_on_the_best_point_it_evaluated(
    taus, center, min_improvement
):
    params, delta, loss = _line(center)

    def scripted(ray, max_tau, start):
        for tau in taus:
            ray.evaluate(tau)

    result = fast_forward_stage(
        params, delta, loss, search=scripted, max_tau=60, min_improvement=min_improvement
    )

    evaluated = list(dict.fromkeys([0, *taus]))  # in order, each once
    losses = {tau: (0.5 + 0.25 * tau - center) ** 2 for tau in evaluated}
    best = min(evaluated, key=lambda tau: (losses[tau], evaluated.index(tau)))
    l0 = losses[0]
    if losses[best] > l0 - min_improvement * abs(l0):
        best = 0
    assert result.evaluations == len(evaluated)
    assert result.tau == best
    assert result.loss_after == pytest.approx(losses[best], rel=1e-12)
    assert result.loss_after <= result.loss_before
    assert bitwise_equal(params[0], _point(best))


@pytest.mark.parametrize(
    ("stray", "error", "message"),
    [
        (61, ValueError, r"tau=61; tau must be in \[0, max_tau\], max_tau=60"),
        (-1, ValueError, r"tau=-1; tau must be in \[0, max_tau\]"),
        (2.5, TypeError, r"tau=2.5; tau must be an int"),
        (True, TypeError, r"tau=True; tau must be an int"),
    ],
)
def test_a_strategy_that_leaves_the_ray_is_stopped_at_the_best_point(stray, error, message):
    params, delta, loss = _line(center=100.0)  # improving all the way: τ = 5 is the best so far

    def strays(ray, max_tau, start):
        ray.evaluate(2)
        ray.evaluate(5)
        ray.evaluate(stray)

    with pytest.raises(error, match=message):
        fast_forward_stage(params, delta, loss, search=strays, max_tau=60)
    assert bitwise_equal(params[0], _point(5))


def test_a_strategy_cannot_rewrite_what_the_ray_knows():
    params, delta, loss = _line(center=100.0)

    def cheats(ray, max_tau, start):
        ray.evaluate(3)
        for name, value in [("best_tau", 50), ("best_loss", -1.0), ("max_tau", 10**6)]:
            with pytest.raises(AttributeError):
                setattr(ray, name, value)
        with pytest.raises(TypeError):
            ray.losses[50] = -1.0

    result = fast_forward_stage(params, delta, loss, search=cheats, max_tau=60)
    assert result.tau == 3
    assert bitwise_equal(params[0], _point(3))


@given(start=st.integers(1, 10_000), max_tau=st.integers(1, 50))
def test_a_strategy_gets_a_start_within_max_tau(start, max_tau):
    params, delta, loss = _line(center=100.0)
    seen = []

    def probes_its_hint(ray, max_tau, start):
        seen.append((max_tau, start))
        ray.evaluate(start)

    result = fast_forward_stage(
        params, delta, loss, search=probes_its_hint, start=start, max_tau=max_tau
    )
    assert seen == [(max_tau, min(start, max_tau))]
    assert result.tau == min(start, max_tau)


def test_a_strategy_that_raises_leaves_the_best_point_and_propagates():
    params, delta, loss = _line(center=100.0)

    def fails(ray, max_tau, start):
        ray.evaluate(7)
        ray.evaluate(3)
        raise RuntimeError("strategy bug")

    with pytest.raises(RuntimeError, match="strategy bug"):
        fast_forward_stage(params, delta, loss, search=fails)
    assert bitwise_equal(params[0], _point(7))


def every_fourth(ray, max_tau, start):
    """τ = 4, 8, 12, ... while the loss improves: a module-level strategy, so it has a name."""
    tau = 4
    while tau <= max_tau and ray.improves(tau):
        tau += 4


def _wrapper(search):
    model = Quadratic(fixed_quadratic(dim=3, seed=1))
    adam = torch.optim.Adam([model.x], lr=0.02)
    return model, paper_fast_forward(adam, model, model, 3, patience=None, search=search)


def test_the_wrapper_runs_a_custom_strategy_in_its_stages():
    model, ff = _wrapper(every_fourth)
    train(model, ff, 9)
    taus = [record.tau for record in ff.stats.history]
    assert len(taus) == 3
    assert all(tau % 4 == 0 for tau in taus)
    assert any(tau > 0 for tau in taus)
    assert "search='test_custom_search.every_fourth'" in repr(ff)


def test_a_checkpoint_names_the_custom_strategy_and_resumes_bitwise_with_it():
    model, ff = _wrapper(every_fourth)
    train(model, ff, 14)

    first_model, first = _wrapper(every_fourth)
    train(first_model, first, 8)
    checkpoint = through_disk({"model": first_model.state_dict(), "optim": first.state_dict()})
    assert checkpoint["optim"]["fastforward"]["hyperparameters"]["search"] == (
        "test_custom_search.every_fourth"
    )

    resumed_model, resumed = _wrapper(every_fourth)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optim"])
    train(resumed_model, resumed, 6)
    assert resumed.search is every_fourth
    assert bitwise_equal(resumed_model.x.detach(), model.x.detach())
    assert [r.tau for r in resumed.stats.history] == [r.tau for r in ff.stats.history]


@pytest.mark.parametrize("loader_search", ["parabolic", linear_search])
def test_a_checkpoint_of_a_custom_strategy_needs_that_strategy_to_load(loader_search):
    model, ff = _wrapper(every_fourth)
    train(model, ff, 4)
    _, other = _wrapper(loader_search)
    with pytest.raises(ValueError, match="saved with the search strategy 'test_custom_search"):
        other.load_state_dict(through_disk(ff.state_dict()))
    assert other.search == loader_search  # the rejected dict changed nothing
    assert not other.optimizer.state
    assert other.state is other.optimizer.state


def test_a_partial_is_saved_with_its_arguments():
    def capped(ray, max_tau, start, limit):
        parabolic_search(ray, min(max_tau, limit), start)

    _, ff = _wrapper(functools.partial(capped, limit=8))
    _, other = _wrapper(functools.partial(capped, limit=9))
    name = ff.state_dict()["fastforward"]["hyperparameters"]["search"]
    assert name.startswith("functools.partial(test_custom_search.")
    assert name.endswith(".capped, limit=8)")
    with pytest.raises(ValueError, match="limit=8"):
        other.load_state_dict(ff.state_dict())


def test_a_built_in_function_is_saved_under_its_name():
    model, ff = _wrapper(parabolic_search)
    train(model, ff, 4)
    assert ff.state_dict()["fastforward"]["hyperparameters"]["search"] == "parabolic"
    assert "search='parabolic'" in repr(ff)


def no_longer_than_last_time(ray, max_tau, start):
    """The README's example: parabolic search, never further than twice the last τ*."""
    parabolic_search(ray, min(max_tau, 2 * start), start)


def test_the_wrapper_passes_the_last_tau_as_start():
    model = Quadratic(fixed_quadratic(dim=3, seed=1))
    adam = torch.optim.Adam([model.x], lr=1e-3)  # small steps: τ* far beyond the cap
    ff = paper_fast_forward(adam, model, model, 3, patience=None, search=no_longer_than_last_time)
    train(model, ff, 15)
    taus = [record.tau for record in ff.stats.history]
    caps = [2 * max(1, previous) for previous in [0, *taus[:-1]]]
    assert taus == caps  # every stage ran to its cap: 2, 4, 8, ...
