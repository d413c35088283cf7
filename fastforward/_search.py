"""Search strategies: which points ``W_n + τΔ`` a stage evaluates.

A strategy only chooses points on a :class:`~fastforward.functional.Ray`; the ray owns the
parameters and the stage lands on the best point evaluated, whatever the strategy does.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fastforward._stage import Ray


def linear_search(ray: Ray, max_tau: int, start: int = 1) -> None:
    """The paper's search: τ = 1, 2, ... while the loss keeps improving, at most ``max_tau``.

    Costs ``τ* + 1`` evaluations after ``L_0`` (``max_tau`` when capped). ``start`` is ignored.
    """
    for tau in range(1, max_tau + 1):
        if not ray.improves(tau):
            return


def _bracket_search(ray: Ray, max_tau: int, start: int = 1) -> None:
    """Find the integer minimiser of a unimodal loss along Δ in ``O(log τ*)`` evaluations.

    From ``start``: double τ while the loss improves (or halve it while it does not beat
    ``L_0``), which brackets the minimiser as ``a < m < b`` with ``L_m`` below ``L_a`` and not
    above ``L_b``; then bisect the larger half of the bracket until ``b - a <= 2``. The paper
    finds the loss along Δ convex (App. B), where this returns the same τ as linear search; on
    other shapes it returns a local minimum, never above ``L_0``. Its cost from ``start = 1``:
    :func:`doubling_search`. Expects ``ray.evaluate(0)`` to have been called.
    """
    a, m, b = _bracket(ray, max_tau, max(1, min(start, max_tau)))
    while b - a > 2:
        probe = _middle(a, m, b)
        if ray.improves(probe):
            a, m, b = (a, probe, m) if probe < m else (m, probe, b)
        elif probe < m:
            a = probe
        else:
            b = probe


def _middle(a: int, m: int, b: int) -> int:
    """The middle of the larger of ``(a, m)`` and ``(m, b)``: strictly inside it."""
    return (a + m) // 2 if m - a > b - m else (m + b + 1) // 2


def _bracket(ray: Ray, max_tau: int, start: int) -> tuple[int, int, int]:
    """``(a, m, b)`` with ``m`` the best point so far and the minimiser in ``(a, b)``."""
    if ray.improves(start):
        low, tau = 0, start
        while tau < max_tau:
            farther = min(2 * tau, max_tau)
            if not ray.improves(farther):
                return low, tau, farther
            low, tau = tau, farther
        return low, tau, tau + 1  # improved at max_tau: treat max_tau + 1 as worse, never probe it
    high = start
    while high > 1:
        tau = high // 2
        if ray.improves(tau):
            return 0, tau, high
        high = tau
    return 0, 0, 0  # not even τ = 1 improves


def doubling_search(ray: Ray, max_tau: int, start: int = 1) -> None:
    """τ = 1, 2, 4, ... while the loss improves, then bisection inside the last bracket.

    On a loss convex along Δ it finds the same τ as :func:`linear_search` in at most
    ``3 ceil(log2(τ* + 1)) + 5`` evaluations, ``L_0`` included (``tests/test_search.py``); on
    other shapes a local minimum. ``start`` is ignored.
    """
    _bracket_search(ray, max_tau, 1)


def parabolic_search(ray: Ray, max_tau: int, start: int = 1) -> None:
    """The paper's first steps τ = 1, 2, 3, then the vertices of parabolas through the losses.

    Past τ = 3 it jumps to the vertex of the parabola through the last three points while the
    loss improves, then closes in on the minimiser with parabolas through the lowest points
    until both integer neighbours of the best point are evaluated. On a loss that is quadratic
    on each side of its minimiser, with any two curvatures (the loss along Δ is convex, paper
    App. B), it finds the same τ as :func:`linear_search` in at most
    ``min(τ* + 2, 2 log2(τ* + 1) + 3)`` evaluations, ``L_0`` included (``τ* + 1`` when capped
    at ``max_tau``): never more than the paper's search, and logarithmic in τ*
    (``tests/test_search.py``). From τ* = 8 on it spends one more pass at 2τ*, and searches on
    from there if the loss is lower (a second basin past a bump, as on a real model). On other
    losses it returns a local minimum, never above ``L_0``; safeguards (steps that grow
    geometrically while the loss improves, a bracket that halves every two probes) keep it
    logarithmic in ``max_tau``. ``start`` is ignored.
    """
    for tau in range(1, min(3, max_tau) + 1):
        if not ray.improves(tau):
            return
    if max_tau <= 3:
        return
    while True:
        _extrapolate(ray, max_tau)
        _close_in(ray, max_tau)
        if not _farther_basin(ray, max_tau):
            return


FARTHER_BASIN_FROM = 8
"""From this τ* on, :func:`parabolic_search` spends one pass at 2τ* looking for a farther basin."""


def _farther_basin(ray: Ray, max_tau: int) -> bool:
    """Evaluate ``2 τ*``: whether the loss is lower there, past a bump along Δ.

    The loss along Δ is not always convex: on a real model we measured a local minimum, a bump,
    and a lower minimum at twice the τ of the first (``docs/results.md``). Linear search stops
    at the first; one probe at twice the minimiser found (which doubles τ* each
    time it succeeds, so it can succeed at most ``log2(max_tau)`` times) finds a farther basin
    that is lower there. On a loss quadratic on each side of its minimiser the probe loses and
    costs one pass, within the bound's slack from τ* = 8 on.
    """
    best = ray.best_tau
    farther = min(2 * best, max_tau)
    if best < FARTHER_BASIN_FROM or farther <= best + 1 or farther in ray.losses:
        return False
    return ray.improves(farther)


def _extrapolate(ray: Ray, max_tau: int) -> None:
    """Move right while the loss improves and no point right of the best has been evaluated.

    Each probe is the vertex of the parabola through the last three points when it opens
    upwards (doubling τ otherwise), or the next τ when that vertex is not right of the best
    point. Each step is at least twice the longest that improved before it, except a next-τ
    step after a step that did not improve on the parabola's word, so the loop takes
    ``O(log max_tau)`` probes.
    """
    least_step, misled = 1, 0
    while ray.best_tau < max_tau and max(ray.losses) == ray.best_tau:
        best = ray.best_tau
        vertex = _trailing_vertex(ray, best)
        if vertex is None:
            probe = 2 * best
        elif round(vertex) <= best and misled < 2:
            probe = best + 1
        else:
            probe = max(round(vertex), best + least_step)
        probe = min(probe, max_tau)
        improved = ray.improves(probe)
        rounded_up = vertex is not None and probe == round(vertex) > vertex
        if rounded_up and probe - 1 not in ray.losses and (not improved or _settles(ray, probe)):
            ray.evaluate(probe - 1)  # the vertex was rounded up: the minimiser may be below it
        if not improved:
            return
        misled = misled + 1 if vertex is not None and round(vertex) <= best else 0
        least_step = max(least_step, 2 * (probe - best))


def _trailing_vertex(ray: Ray, best: int) -> float | None:
    """The vertex of the parabola through ``best``, the rightmost point, and the two before it."""
    before, last = sorted(ray.losses)[-3:-1]
    return _vertex(ray, before, last, best)


def _settles(ray: Ray, best: int) -> bool:
    """Whether the trailing parabola bottoms out at or below ``best`` (about the minimiser)."""
    vertex = _trailing_vertex(ray, best)
    return vertex is not None and round(vertex) <= best


def _close_in(ray: Ray, max_tau: int) -> None:
    """Shrink the bracket around the best point until both its neighbours are evaluated.

    Probes a parabola's vertex; bisects the larger half instead when the bracket is not half
    as wide as two probes before, unless the probe is a neighbour of the best point and the
    last probe was not a neighbour that improved (crawling one τ at a time).
    """
    widths: list[int] = []
    crawled = False
    while True:
        best = ray.best_tau
        below = max(tau for tau in ray.losses if tau < best)
        above = min((tau for tau in ray.losses if tau > best), default=max_tau + 1)
        if above - below <= 2:
            return
        if above > max_tau:  # improved at max_tau: only the points below it are left
            probe = best - 1 if best - 1 not in ray.losses else _middle(below, best, above)
        else:
            probe = _vertex_probe(ray, below, best, above)
            neighbour = abs(probe - best) == 1 and not crawled
            if len(widths) >= 2 and 2 * (above - below) > widths[-2] and not neighbour:
                probe = _middle(below, best, above)  # the bracket must halve every two probes
        widths.append(above - below)
        crawled = ray.improves(probe) and abs(probe - best) == 1


def _vertex_probe(ray: Ray, a: int, m: int, b: int) -> int:
    """The integer nearest a parabola's vertex, strictly inside the bracket ``(a, b)`` of ``m``.

    The parabola through the three lowest finite losses (Brent's choice: the points nearest
    the minimiser) when its vertex lies in the bracket, else the one through a, m, b. If the
    integer is ``m``, its neighbour on the vertex's side (m is the minimiser iff both lose).
    """
    finite = [tau for tau, loss in ray.losses.items() if math.isfinite(loss)]
    lowest = sorted(sorted(finite, key=lambda tau: (ray.losses[tau], tau))[:3])
    vertex = _vertex(ray, *lowest) if len(lowest) == 3 else None
    if vertex is None or not a < vertex < b:
        vertex = _vertex(ray, a, m, b)
    if vertex is None:
        return _middle(a, m, b)
    probe = min(max(round(vertex), a + 1), b - 1)
    if probe != m:
        return probe
    toward = m + 1 if vertex > m else m - 1
    other = 2 * m - toward
    return toward if a < toward < b else other if a < other < b else _middle(a, m, b)


def _vertex(ray: Ray, a: int, m: int, b: int) -> float | None:
    """The vertex of the parabola through the losses at a < m < b; None unless it opens upwards."""
    fa, fm, fb = ray.losses[a], ray.losses[m], ray.losses[b]
    if not (math.isfinite(fa) and math.isfinite(fm) and math.isfinite(fb)):
        return None
    slope_left, slope_right = (fm - fa) / (m - a), (fb - fm) / (b - m)
    if not slope_right > slope_left:
        return None
    vertex = (a + m) / 2 - slope_left * (b - a) / (2 * (slope_right - slope_left))
    return vertex if math.isfinite(vertex) else None


def warm_start_search(ray: Ray, max_tau: int, start: int = 1) -> None:
    """As :func:`doubling_search`, but bracketing outwards from ``start`` instead of τ = 1.

    ``start`` is the previous stage's τ* in the wrapper (τ* changes slowly over training, paper
    Fig. 11): doubling from there while the loss improves, halving while it does not beat
    ``L_0``. Cheapest when τ* is near ``start``; no bound of its own beyond ``max_tau + 1``.
    """
    _bracket_search(ray, max_tau, start)


class SearchStrategy(Protocol):
    """How a stage chooses the points to evaluate: ``strategy(ray, max_tau, start)``.

    It calls :meth:`Ray.evaluate` (or :meth:`Ray.improves`) on τ in ``[0, max_tau]`` and
    returns; the stage then lands on the best point evaluated. It must return, and decide from
    the losses alone: under DDP every rank sees the same all-reduced losses, so a deterministic
    strategy makes the same decisions on every rank. ``start`` is a hint in ``[1, max_tau]``: the
    previous stage's τ* in the wrapper (1 if that was 0). What it returns is ignored. Any
    function with this signature will do.

    Example:
        >>> import torch
        >>> from fastforward.functional import fast_forward_stage
        >>> def coarse_grid(ray, max_tau, start):
        ...     for tau in (8, 16, 32):
        ...         ray.evaluate(tau)
        >>> w = [torch.tensor([0.0])]
        >>> loss = lambda: float((w[0] - 30.2) ** 2)
        >>> result = fast_forward_stage(w, [torch.tensor([1.0])], loss, search=coarse_grid)
        >>> result.tau, w[0].item(), result.evaluations  # it lands on the best point evaluated
        (32, 32.0, 4)
    """

    def __call__(self, ray: Ray, max_tau: int, start: int, /) -> None: ...


SEARCHES: dict[str, SearchStrategy] = {
    "linear": linear_search,
    "doubling": doubling_search,
    "parabolic": parabolic_search,
    "warm_start": warm_start_search,
}
"""The built-in strategies, by the name ``search=`` accepts."""

SEARCH_STRATEGIES = tuple(SEARCHES)
"""The names of the built-in search strategies that ``search=`` accepts, as a tuple of str."""


DEFAULT_SEARCH = "parabolic"
"""The strategy of the wrapper and of ``fast_forward_stage`` when none is named."""


def _check_search(search: object) -> None:
    if callable(search):
        return
    if not isinstance(search, str) or search not in SEARCHES:
        raise ValueError(
            f"fastforward: search must be one of {sorted(SEARCHES)} or a callable "
            f"(ray, max_tau, start), got {search!r}"
        )


def _strategy(search: str | SearchStrategy) -> SearchStrategy:
    return SEARCHES[search] if isinstance(search, str) else search


def _search_name(search: str | SearchStrategy) -> str:
    """How a checkpoint names ``search``: a built-in's name, else ``module.qualname``.

    A ``functools.partial`` is named by its function and the ``repr`` of its arguments.
    """
    if isinstance(search, str):
        return search
    for name, strategy in SEARCHES.items():
        if search is strategy:
            return name
    if isinstance(search, functools.partial):
        arguments = [repr(argument) for argument in search.args]
        arguments += [f"{key}={value!r}" for key, value in search.keywords.items()]
        return f"functools.partial({', '.join([_search_name(search.func), *arguments])})"
    owner = search if hasattr(search, "__qualname__") else type(search)
    return f"{owner.__module__}.{owner.__qualname__}"
