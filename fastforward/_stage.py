"""One Fast Forward stage: evaluate ``L_0``, search along ``W_n + τΔ``, land on the best point.

The algorithm of the paper (§3) in one place: :func:`fast_forward_stage` (and its checked-once
twin :func:`run_stage`, the wrapper's) copies ``W_n``, lets a search strategy choose points on a
:class:`Ray`, and lands. The strategies are in ``_search.py``, the tensor math in ``_kernels.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from fastforward._checks import (
    MAX_TAU_LIMIT,
    _as_loss,
    _check_bool,
    _check_int,
    _check_min_improvement,
    _check_tau,
    _distinct,
)
from fastforward._docs import shares_args
from fastforward._kernels import _copy_, _set_point_
from fastforward._search import DEFAULT_SEARCH, SearchStrategy, _check_search, _strategy

DEFAULT_MIN_IMPROVEMENT = 1e-3
"""The relative gain over ``L_0`` a stage needs to leave ``W_n``, unless told otherwise."""


@dataclass(frozen=True)
class StageResult:
    """What :func:`fast_forward_stage` did.

    Attributes:
        tau: Accepted simulated steps: the tensors were left at ``W_n + tau * delta``.
        loss_before: Loss at ``W_n``.
        loss_after: Loss at the landing point (``loss_before`` when ``tau == 0``).
        evaluations: Calls of ``loss`` made, including the one at ``W_n``.
        rejected_tau: With ``tau == 0``: the best point found, if ``min_improvement`` turned
            it down (it beat ``L_0``, by less than the margin); else ``None``.
        rejected_loss: Its loss, or ``None``.
        loss_at_span_start: The loss at ``W_n - Δ`` (where Δ's span began), evaluated for
            the wrapper's ``cost_aware`` rule only if the stage left ``W_n``; always ``None``
            from :func:`fast_forward_stage`.
    """

    tau: int
    loss_before: float
    loss_after: float
    evaluations: int
    rejected_tau: int | None = None
    rejected_loss: float | None = None
    loss_at_span_start: float | None = None


@shares_args
def fast_forward_stage(
    params: list[Tensor],
    delta: list[Tensor],
    loss: Callable[[], object],
    *,
    search: str | SearchStrategy = DEFAULT_SEARCH,
    max_tau: int = 1000,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    start: int = 1,
    anchor: list[Tensor] | None = None,
    foreach: bool | None = None,
) -> StageResult:
    r"""Search ``W_n + τΔ`` for the τ with the lowest loss and leave ``params`` there.

    .. math::

        W \leftarrow W_n + \tau^*\Delta, \qquad
        \tau^* = \operatorname{arg\,min}_{\tau \in \{0, \dots, max\_tau\}}
        L(W_n + \tau\Delta) \text{ as found by } search

    ``params`` end **bitwise** at the best point evaluated (``W_n`` itself if nothing beat the
    loss there), also when ``loss`` raises, in which case the exception propagates. Runs under
    ``torch.no_grad()``; a non-finite loss at ``W_n`` ends the stage at once with ``tau == 0``.
    :class:`~fastforward.FastForward` runs exactly this after its scheduled steps (its first
    stage that leaves ``W_n`` with ``cost_aware`` and Δ over the interval adds one pass at
    ``W_n - Δ``, after the search).

    Args:
        params: Tensors holding ``W_n``; moved in place. A tensor listed more than once is
            moved once, with the ``delta`` (and ``anchor``) of its first entry.
        delta: The direction, one tensor per entry of ``params`` (same shape, dtype, device).
        loss: Zero-argument callable returning the loss at the current ``params``: a Python
            number or a 0-dim tensor. Under FSDP2 it must regather what ``params`` (the local
            shards) hold: call ``reshard()`` on the model's FSDP modules before its forward, as
            :class:`~fastforward.FastForward` does (the root keeps its gathered parameters after
            a forward without backward).
        search: {shared}
        max_tau: {shared}
        min_improvement: {shared}
        start: A hint passed on to the strategy: the first τ ``"warm_start"`` tries; capped
            at ``max_tau`` (default: 1).
        anchor: Preallocated buffers for the copy of ``W_n`` (default: allocated here; the
            stage's only memory of its own).
        foreach: {shared}

    Returns:
        A :class:`StageResult`.

    Raises:
        ValueError: ``params`` is empty, ``delta`` or ``anchor`` does not match it, ``search``
            names no strategy, ``max_tau`` or ``start`` is out of range, ``min_improvement`` is
            outside ``[0, 1)``, or the strategy evaluated a τ outside ``[0, max_tau]`` (the
            parameters are then at the best point so far).
        TypeError: an argument, a τ the strategy evaluated, or a loss has the wrong type.
        RuntimeError: a strategy used a :class:`Ray` of a stage that had ended.

    Example:
        >>> import torch
        >>> from fastforward.functional import fast_forward_stage
        >>> w = [torch.tensor([0.0])]
        >>> loss = lambda: float((w[0] - 30.2) ** 2)
        >>> result = fast_forward_stage(w, [torch.tensor([1.0])], loss)
        >>> result.tau, w[0].item(), result.evaluations  # linear search would need 32
        (30, 30.0, 8)
    """
    _check_search(search)
    max_tau = _check_int("max_tau", max_tau, 1, MAX_TAU_LIMIT)
    min_improvement = _check_min_improvement(min_improvement)
    start = min(_check_int("start", start, 1), max_tau)
    params, delta, anchor = _distinct(params, delta, anchor)
    return run_stage(
        params,
        delta,
        loss,
        search=search,
        max_tau=max_tau,
        min_improvement=min_improvement,
        start=start,
        anchor=anchor,
        foreach=True if foreach is None else _check_bool("foreach", foreach),
    )


def run_stage(
    params: list[Tensor],
    delta: list[Tensor],
    loss: Callable[[], object],
    *,
    search: str | SearchStrategy,
    max_tau: int,
    min_improvement: float,
    start: int,
    anchor: list[Tensor] | None,
    foreach: bool,
    reversed_delta: bool = False,
    span_start: bool = False,
) -> StageResult:
    """:func:`fast_forward_stage` on arguments already checked (the wrapper's hot path).

    With ``reversed_delta``, ``delta`` holds ``-Δ`` (see :class:`Ray`). With ``span_start``, a
    stage that leaves ``W_n`` also evaluates ``W_n - Δ`` once the search is done (one more
    pass, counted in ``evaluations``; its loss in ``loss_at_span_start``): where Δ's span began,
    up to rounding, for the tensors Δ moves (buffers and frozen weights stay as they are), which
    ``cost_aware`` measures training's pace from. The landing is unchanged, bitwise, also if
    that pass raises.
    """
    span_loss = None
    with torch.no_grad():
        if anchor is None:
            anchor = [torch.empty_like(p) for p in params]
        _copy_(anchor, params, foreach=foreach)
        ray = Ray(params, anchor, delta, loss, max_tau, foreach, min_improvement, reversed_delta)
        try:
            if math.isfinite(ray.evaluate(0)):
                _strategy(search)(ray, max_tau, start)
                if span_start and ray._leaves_anchor():
                    span_loss = ray._evaluate_span_start()
        finally:
            ray._land_()
    loss_after = ray.best_loss if ray.best_loss < math.inf else ray.loss_at_anchor
    rejected_tau, rejected_loss = ray._rejected or (None, None)
    return StageResult(
        ray.best_tau, ray.loss_at_anchor, loss_after, ray.evaluations, rejected_tau, rejected_loss,
        span_loss,
    )  # fmt: skip


class Ray:
    """The points ``W_n + τΔ`` (τ = 0, 1, ..., ``max_tau``) of one stage, and the best one so far.

    A search strategy receives a ray and only chooses which τ to :meth:`evaluate`; the ray owns
    the parameters, so whatever a strategy does, the stage leaves them bitwise at the best point
    evaluated (``W_n`` until a point beats the loss there). A loss counts as better only if it is
    finite and strictly below the best, so NaN, inf and ties never move the landing point; ties
    go to the point evaluated first. Each τ is evaluated at most once: asking again returns the
    cached loss, so a strategy costs at most ``max_tau + 1`` evaluations, ``L_0`` included.
    ``L_0`` (τ = 0) has been evaluated before a strategy is called. Once the stage has landed,
    the ray refuses to evaluate or move anything. Rays are made by
    :func:`~fastforward.fast_forward_stage` (and so by the wrapper), not by user code.

    Args:
        params: The parameters being moved, mutated in place. They hold ``W_n`` on entry.
        anchor: A copy of ``W_n``, read only.
        delta: ``Δ = W_n - W_{n-1}``, read only; ``-Δ`` with ``reversed_delta`` (the wrapper's
            buffers), which gives the same points, bit for bit.
        loss: The validation loss at the current parameters: a Python number or 0-dim tensor.
        max_tau: The largest τ that may be evaluated.
        foreach: Use the multi-tensor kernels.
        min_improvement: The relative margin by which the best point must beat ``L_0`` for the
            stage to leave ``W_n``.
    """

    def __init__(
        self,
        params: list[Tensor],
        anchor: list[Tensor],
        delta: list[Tensor],
        loss: Callable[[], object],
        max_tau: int,
        foreach: bool,
        min_improvement: float = 0.0,
        reversed_delta: bool = False,
    ) -> None:
        self._params, self._anchor, self._delta = params, anchor, delta
        self._loss, self._foreach, self._reversed_delta = loss, foreach, reversed_delta
        self._min_improvement, self._max_tau = min_improvement, max_tau
        self._position: int | None = 0  # None while a move is in flight: position unknown.
        self._losses: dict[int, float] = {}
        self._best_tau, self._best_loss = 0, math.inf
        self._evaluations = 0
        self._landed = False
        self._rejected: tuple[int, float] | None = None  # (τ, loss) the margin turned down

    @property
    def max_tau(self) -> int:
        """The largest τ that may be evaluated."""
        return self._max_tau

    @property
    def best_tau(self) -> int:
        """The best point evaluated so far (0 until one beats ``L_0``)."""
        return self._best_tau

    @property
    def best_loss(self) -> float:
        """Its loss (``inf`` before ``L_0`` is evaluated)."""
        return self._best_loss

    @property
    def evaluations(self) -> int:
        """Calls of the loss so far, ``L_0`` included."""
        return self._evaluations

    @property
    def losses(self) -> Mapping[int, float]:
        """Every loss evaluated so far, by τ, in the order evaluated (a read-only view)."""
        return MappingProxyType(self._losses)

    @property
    def loss_at_anchor(self) -> float:
        """``L_0``, NaN until evaluated."""
        return self._losses.get(0, math.nan)

    def evaluate(self, tau: int) -> float:
        """The validation loss at ``W_n + tau * Δ`` (moving the parameters there if not cached).

        Raises:
            TypeError: ``tau`` is not an integer (a bool is not), or the loss is not a number.
            ValueError: ``tau`` is outside ``[0, max_tau]``.
            RuntimeError: the stage of this ray has ended.
        """
        if self._landed:
            raise RuntimeError(
                "fastforward: this Ray's stage has ended; a search strategy must not keep its ray"
            )
        tau = _check_tau(tau, self._max_tau)
        if tau in self._losses:
            return self._losses[tau]
        self._move_(tau)
        self._evaluations += 1  # counted even if the call raises: its cost was paid
        loss = self._losses[tau] = _as_loss(self._loss(), "loss")
        if math.isfinite(loss) and loss < self._best_loss:
            self._best_tau, self._best_loss = tau, loss
        return loss

    def improves(self, tau: int) -> bool:
        """Evaluate ``tau``; whether it is now the best point."""
        self.evaluate(tau)
        return self.best_tau == tau

    def _leaves_anchor(self) -> bool:
        """Whether the stage would land off ``W_n``: its best point clears the margin."""
        return self._best_tau != 0 and self._clears_margin(self._best_loss)

    def _evaluate_span_start(self) -> float:
        """The loss at ``W_n - Δ``, outside the search: not cached, never a landing point."""
        self._move_(-1)
        self._evaluations += 1  # counted even if the call raises: its cost was paid
        return _as_loss(self._loss(), "loss")

    def _land_(self) -> None:
        """Leave the parameters bitwise at the best point evaluated, or at ``W_n``.

        ``W_n`` if no point beat ``L_0`` by ``min_improvement``; ``best_tau`` then becomes 0.
        """
        self._landed = True
        if self._best_tau != 0 and not self._leaves_anchor():
            self._rejected = (self._best_tau, self._best_loss)
            self._best_tau, self._best_loss = 0, self._losses[0]
        self._move_(self._best_tau)

    def _clears_margin(self, loss: float) -> bool:
        l0 = self._losses[0]
        return loss <= l0 - self._min_improvement * abs(l0)

    def _move_(self, tau: int) -> None:
        """Write ``W_n + tau * Δ`` into the parameters.

        Under ``no_grad`` whatever the loss left on: a closure that switched gradients on
        must not stop a landing.
        """
        if self._position == tau:
            return
        self._position = None
        with torch.no_grad():
            _set_point_(
                self._params,
                self._anchor,
                self._delta,
                tau,
                foreach=self._foreach,
                reversed_delta=self._reversed_delta,
            )
        self._position = tau
