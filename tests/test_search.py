"""Every search strategy finds the integer minimiser along Δ of a convex loss, within its bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import bitwise_equal, integer_minimiser

from fastforward._search import SEARCHES
from fastforward.functional import Ray

# A tie φ(τ) = φ(τ-1) is decided by rounding; keep the continuous minimiser away from half-integers.
TIE_MARGIN = 1e-6


def evaluation_bound(search: str, tau: int, max_tau: int) -> float:
    """The documented worst case, ``L_0`` included."""
    linear = tau + 2 if tau < max_tau else max_tau + 1
    if search == "linear":
        return linear
    if search == "parabolic":
        return min(linear, 2 * math.log2(tau + 1) + 3)
    return 3 * math.ceil(math.log2(tau + 1)) + 5


def _scalar_ray(phi, max_tau: int, min_improvement: float = 0.0):
    """A one-element "parameter" x = τ (Δ = 1) scored by ``phi(x)``."""
    params = [torch.zeros(1, dtype=torch.float64)]
    anchor, delta = [torch.zeros(1, dtype=torch.float64)], [torch.ones(1, dtype=torch.float64)]
    ray = Ray(
        params,
        anchor,
        delta,
        lambda: phi(params[0].item()),
        max_tau=max_tau,
        foreach=True,
        min_improvement=min_improvement,
    )
    return ray, params


def _parabola_ray(
    center: float, curvature: float, offset: float, min_improvement: float = 0.0, max_tau=1000
):
    """A ray scored by ``offset + curvature (x - center)²``."""
    return _scalar_ray(lambda x: offset + curvature * (x - center) ** 2, max_tau, min_improvement)


parabolas = {
    "center": st.floats(-5.0, 1000.5),
    "curvature": st.floats(1e-3, 1e3),
    "offset": st.floats(-10.0, 10.0),
    "max_tau": st.integers(1, 1000),
    "start": st.integers(1, 1000),
}


@pytest.mark.parametrize("search", sorted(SEARCHES))
@given(**parabolas)
def test_search_finds_the_integer_minimiser_within_its_bound(
    search, center, curvature, offset, max_tau, start
):
    assume(abs(center + 0.5 - round(center + 0.5)) > TIE_MARGIN)
    ray, params = _parabola_ray(center, curvature, offset, max_tau=max_tau)
    ray.evaluate(0)
    SEARCHES[search](ray, max_tau, start)
    ray._land_()

    # φ(τ) - φ(τ-1) = c(2τ - 1 - 2·center): in the closed form's b, c terms, b = -2c·center.
    expected = integer_minimiser(-2 * curvature * center, 2 * curvature, max_tau)
    assert ray.best_tau == expected
    assert params[0].item() == float(expected)
    if search != "warm_start":
        assert ray.evaluations <= evaluation_bound(search, expected, max_tau)


@given(
    center=st.floats(-5.0, 1000.5),
    log_curvatures=st.tuples(st.floats(-7.0, 7.0), st.floats(-7.0, 7.0)),
    offset=st.floats(-10.0, 10.0),
    max_tau=st.integers(1, 1000),
)
def test_parabolic_search_stays_within_the_bound_on_asymmetric_quadratics(
    center, log_curvatures, offset, max_tau
):
    """Quadratic on each side of ``center`` with its own curvature (ratio up to e^14 ≈ 1.2e6)."""
    left, right = (math.exp(log_curvature) for log_curvature in log_curvatures)

    def phi(x: float) -> float:
        return offset + (left if x < center else right) * (x - center) ** 2

    assume(abs(center + 0.5 - round(center + 0.5)) > TIE_MARGIN or left == right)
    ray, params = _scalar_ray(phi, max_tau)
    ray.evaluate(0)
    SEARCHES["parabolic"](ray, max_tau, 1)
    ray._land_()

    # The closed form: the lower of the integers either side of the centre, inside [0, max_tau].
    candidates = {min(max(tau, 0), max_tau) for tau in (math.floor(center), math.ceil(center))}
    expected = min(sorted(candidates), key=phi)
    assert ray.best_tau == expected
    assert params[0].item() == float(expected)
    assert ray.evaluations <= evaluation_bound("parabolic", expected, max_tau)


@given(c1=st.floats(8.0, 200.0), shift=st.floats(-0.25, 0.25))
def test_parabolic_search_finds_a_lower_basin_at_twice_the_first(c1, shift):
    """Two basins, the second lower and near 2τ* of the first (as on SmolLM2): linear search
    stops in the first; the default looks once at 2τ* and lands in the second."""
    c2 = c1 * (2 + shift)

    def phi(x: float) -> float:
        return min((x - c1) ** 2, 4 * (x - c2) ** 2 - c1**2 / 2) / c1**2

    assume(min(abs(c + 0.5 - round(c + 0.5)) for c in (c1, c2)) > TIE_MARGIN)
    landed = {}
    for search in ("linear", "parabolic"):
        ray, _ = _scalar_ray(phi, 1000)
        ray.evaluate(0)
        SEARCHES[search](ray, 1000, 1)
        ray._land_()
        landed[search] = ray.best_tau
    assert landed["linear"] == min((math.floor(c1), math.ceil(c1)), key=phi)
    assert landed["parabolic"] == min((math.floor(c2), math.ceil(c2)), key=phi)


@st.composite
def convex_sequences(draw: st.DrawFn) -> list[int]:
    """Integer losses with strictly increasing, never zero, differences: one strict minimiser."""
    slopes = draw(st.lists(st.integers(-(10**6), 10**6).filter(bool), unique=True, max_size=300))
    losses = [0]
    for slope in sorted(slopes):
        losses.append(losses[-1] + slope)
    return losses


@pytest.mark.parametrize("search", sorted(SEARCHES))
@given(losses=convex_sequences(), start=st.integers(1, 300))
def test_every_search_finds_the_minimiser_of_any_convex_loss(search, losses, start):
    max_tau = len(losses) - 1
    assume(max_tau >= 1)
    ray, params = _scalar_ray(lambda x: float(losses[round(x)]), max_tau)
    ray.evaluate(0)
    SEARCHES[search](ray, max_tau, min(start, max_tau))
    ray._land_()

    assert ray.best_tau == losses.index(min(losses))
    assert params[0].item() == float(ray.best_tau)
    assert ray.evaluations <= max_tau + 1


@pytest.mark.parametrize("search", sorted(SEARCHES))
@given(losses=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2))
def test_any_loss_sequence_lands_bitwise_on_the_best_point_never_above_l0(search, losses):
    """Arbitrary (non-convex, NaN, inf) losses: termination, best point, bitwise landing."""
    params = [torch.tensor([0.25, -3.0])]
    anchor = [params[0].clone()]
    delta = [torch.tensor([0.1, 1e-3])]
    at = []

    def loss():
        tau = round((params[0][0].item() - 0.25) / 0.1)
        at.append(tau)
        return losses[tau % len(losses)]

    ray = Ray(params, anchor, delta, loss, max_tau=len(losses) * 3, foreach=True)
    l0 = ray.evaluate(0)
    assume(math.isfinite(l0))
    SEARCHES[search](ray, len(losses) * 3, 1)
    ray._land_()

    assert len(at) == len(set(at))  # no point evaluated twice
    finite = {t: losses[t % len(losses)] for t in at if math.isfinite(losses[t % len(losses)])}
    assert ray.best_loss == min(finite.values())
    assert ray.best_loss <= l0
    assert ray.best_tau == next(t for t in at if finite.get(t) == ray.best_loss)  # ties: first
    expected = anchor[0].clone().add_(delta[0], alpha=ray.best_tau) if ray.best_tau else anchor[0]
    assert bitwise_equal(params[0], expected)


@given(
    center=st.floats(2.0, 300.0),
    offset=st.floats(1.0, 1e6),
    min_improvement=st.floats(1e-4, 0.5),
    search=st.sampled_from(sorted(SEARCHES)),
)
def test_min_improvement_keeps_w_n_unless_the_best_point_beats_l0_by_the_margin(
    center, offset, min_improvement, search
):
    plain, _ = _parabola_ray(center, curvature=1.0, offset=offset)
    guarded, params = _parabola_ray(center, 1.0, offset, min_improvement=min_improvement)
    for ray in (plain, guarded):
        ray.evaluate(0)
        SEARCHES[search](ray, 1000, 1)
        ray._land_()

    assert guarded.losses == plain.losses  # the margin judges the stage, not the search
    l0 = plain.losses[0]
    clears = plain.best_loss <= l0 - min_improvement * abs(l0)
    assert guarded.best_tau == (plain.best_tau if clears else 0)
    assert guarded.best_loss == (plain.best_loss if clears else l0)
    assert params[0].item() == float(guarded.best_tau)
