"""One Fast Forward stage: the ray ``W_n + τΔ`` and the strategies that search along it."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from fastforward._functional import _set_point_


class _Ray:
    """The points ``W_n + τΔ`` (τ = 0, 1, 2, ...) of one stage and the best one evaluated so far.

    Search strategies only choose which τ to evaluate; the ray owns the parameters, so whatever
    a strategy does, :meth:`land_` leaves them bitwise at the best point evaluated (``W_n`` until
    a point beats the loss there). A loss counts as better only if it is finite and strictly
    below the best, so NaN, inf and ties never move the landing point. Each τ is evaluated at
    most once.

    Args:
        params: The parameters being moved, mutated in place. They hold ``W_n`` on entry.
        anchor: A copy of ``W_n``, read only.
        delta: ``Δ = W_n - W_{n-1}``, read only.
        loss: Evaluates the validation loss at the current parameters.
        foreach: Use the multi-tensor kernels.
        min_improvement: Relative margin by which the best point must beat ``L_0`` for
            :meth:`land_` to leave ``W_n``, e.g. 1e-3 for 0.1%. It judges the stage as a whole:
            single simulated steps at a small learning rate gain far less than any useful margin.
    """

    def __init__(
        self,
        params: list[Tensor],
        anchor: list[Tensor],
        delta: list[Tensor],
        loss: Callable[[], float],
        *,
        foreach: bool,
        min_improvement: float = 0.0,
    ) -> None:
        self._params, self._anchor, self._delta = params, anchor, delta
        self._loss, self._foreach = loss, foreach
        self._min_improvement = min_improvement
        self._position: int | None = 0  # None while a move is in flight: position unknown.
        self.losses: dict[int, float] = {}
        self.best_tau = 0
        self.best_loss = math.inf
        self.evaluations = 0

    @property
    def loss_at_anchor(self) -> float:
        """``L_0``, NaN until evaluated."""
        return self.losses.get(0, math.nan)

    def evaluate(self, tau: int) -> float:
        """The validation loss at ``W_n + tau * Δ`` (moving the parameters there if not cached)."""
        if tau in self.losses:
            return self.losses[tau]
        self._move_(tau)
        self.evaluations += 1  # counted even if the call raises: its cost was paid
        loss = self.losses[tau] = self._loss()
        if self._beats_best(loss):
            self.best_tau, self.best_loss = tau, loss
        return loss

    def improves(self, tau: int) -> bool:
        """Evaluate ``tau``; whether it became the best point."""
        self.evaluate(tau)
        return self.best_tau == tau

    def land_(self) -> None:
        """Leave the parameters bitwise at the best point evaluated, or at ``W_n``.

        ``W_n`` if no point beat ``L_0`` by ``min_improvement``; ``best_tau`` then becomes 0.
        """
        if self.best_tau != 0 and not self._clears_margin(self.best_loss):
            self.best_tau, self.best_loss = 0, self.losses[0]
        self._move_(self.best_tau)

    def _beats_best(self, loss: float) -> bool:
        return math.isfinite(loss) and loss < self.best_loss

    def _clears_margin(self, loss: float) -> bool:
        l0 = self.losses[0]
        return loss <= l0 - self._min_improvement * abs(l0)

    def _move_(self, tau: int) -> None:
        if self._position == tau:
            return
        self._position = None
        _set_point_(self._params, self._anchor, self._delta, tau, foreach=self._foreach)
        self._position = tau


def _linear_search(ray: _Ray, max_tau: int, start: int = 1) -> None:
    """The paper's search: τ = 1, 2, ... while the loss keeps improving, at most ``max_tau``.

    Costs ``τ* + 1`` evaluations after ``L_0`` (``max_tau`` when capped). ``start`` is ignored.
    """
    for tau in range(1, max_tau + 1):
        if not ray.improves(tau):
            return


def _bracket_search(ray: _Ray, max_tau: int, start: int = 1, *, interpolate: bool = False) -> None:
    """Find the integer minimiser of a unimodal loss along Δ in ``O(log τ*)`` evaluations.

    From ``start``: double τ while the loss improves (or halve it while it does not beat
    ``L_0``), which brackets the minimiser as ``a < m < b`` with ``L_m`` below ``L_a`` and not
    above ``L_b``; then shrink the bracket until ``b - a <= 2``, probing the middle of its larger
    half or, with ``interpolate``, the vertex of the parabola through the three points (falling
    back to the middle whenever a probe did not halve the bracket). The paper finds the loss
    along Δ convex (App. B), where this returns the same τ as linear search; on other shapes it
    returns a local minimum, never above ``L_0``. From ``start = 1`` it costs at most
    ``3 ceil(log2(τ* + 1)) + 5`` evaluations, ``L_0`` included (``tests/test_search.py``).
    Expects ``ray.evaluate(0)`` to have been called.
    """
    a, m, b = _bracket(ray, max_tau, max(1, min(start, max_tau)))
    bisect = not interpolate
    while b - a > 2:
        width = b - a
        probe = _middle(a, m, b) if bisect or b > max_tau else _vertex(ray, a, m, b)
        if ray.improves(probe):
            a, m, b = (a, probe, m) if probe < m else (m, probe, b)
        elif probe < m:
            a = probe
        else:
            b = probe
        bisect = not interpolate or 2 * (b - a) > width


def _middle(a: int, m: int, b: int) -> int:
    """The middle of the larger of ``(a, m)`` and ``(m, b)``: strictly inside it."""
    return (a + m) // 2 if m - a > b - m else (m + b + 1) // 2


def _vertex(ray: _Ray, a: int, m: int, b: int) -> int:
    """The integer nearest the vertex of the parabola through a, m, b, strictly inside (a, b)."""
    fa, fm, fb = ray.losses[a], ray.losses[m], ray.losses[b]
    numerator = (m - a) ** 2 * (fm - fb) - (m - b) ** 2 * (fm - fa)
    denominator = (m - a) * (fm - fb) - (m - b) * (fm - fa)
    vertex = m - 0.5 * numerator / denominator if denominator != 0 else float(m)
    if not math.isfinite(vertex):
        return _middle(a, m, b)
    probe = min(max(round(vertex), a + 1), b - 1)
    if probe != m:
        return probe
    # The vertex rounds to m: test the neighbour on its side (m is the minimiser iff both lose).
    toward = m + 1 if vertex > m else m - 1
    if a < toward < b and toward not in ray.losses:
        return toward
    other = 2 * m - toward
    return other if a < other < b and other not in ray.losses else _middle(a, m, b)


def _bracket(ray: _Ray, max_tau: int, start: int) -> tuple[int, int, int]:
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


def _doubling_search(ray: _Ray, max_tau: int, start: int = 1) -> None:
    """:func:`_bracket_search` from τ = 1, whatever ``start`` says."""
    _bracket_search(ray, max_tau, 1)


def _parabolic_search(ray: _Ray, max_tau: int, start: int = 1) -> None:
    """:func:`_bracket_search` from τ = 1, refining the bracket by parabolic interpolation."""
    _bracket_search(ray, max_tau, 1, interpolate=True)


SearchFn = Callable[[_Ray, int, int], None]

SEARCHES: dict[str, SearchFn] = {
    "linear": _linear_search,
    "doubling": _doubling_search,
    "parabolic": _parabolic_search,
    "warm_start": _bracket_search,
}
"""Search strategies by name, called as ``search(ray, max_tau, start)``; only ``warm_start``
uses ``start`` (the previous stage's τ*)."""


DEFAULT_SEARCH = "parabolic"
"""The strategy of the wrapper and of ``fast_forward_stage`` when none is named."""

DEFAULT_MIN_IMPROVEMENT = 1e-3
"""The relative gain over ``L_0`` a stage needs to leave ``W_n``, unless told otherwise."""


def _check_search(search: object) -> None:
    if search not in SEARCHES:
        raise ValueError(f"fastforward: search must be one of {sorted(SEARCHES)}, got {search!r}")
