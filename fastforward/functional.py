"""A Fast Forward stage and its search strategies as plain functions, for research code.

:class:`~fastforward.FastForward` runs exactly :func:`fast_forward_stage` after its scheduled
steps; here it works on any list of tensors with any loss callable. ``search=`` takes the name of
a built-in strategy or any :class:`SearchStrategy`: a function that evaluates points on a
:class:`Ray` and returns, after which the stage lands on the best point evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fastforward._checks import MAX_TAU_LIMIT, _check_int, _check_min_improvement
from fastforward._functional import _copy_
from fastforward._stage import (
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_SEARCH,
    SEARCHES,
    Ray,
    SearchStrategy,
    _check_search,
    _strategy,
    doubling_search,
    linear_search,
    parabolic_search,
    warm_start_search,
)

__all__ = [
    "SEARCH_STRATEGIES",
    "Ray",
    "SearchStrategy",
    "StageResult",
    "doubling_search",
    "fast_forward_stage",
    "linear_search",
    "parabolic_search",
    "warm_start_search",
]

SEARCH_STRATEGIES = tuple(SEARCHES)
"""The names of the built-in search strategies that ``search=`` accepts, as a tuple of str."""


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
    """

    tau: int
    loss_before: float
    loss_after: float
    evaluations: int
    rejected_tau: int | None = None
    rejected_loss: float | None = None


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

    Args:
        params: Tensors holding ``W_n``; moved in place. A tensor listed more than once is
            moved once, with the ``delta`` (and ``anchor``) of its first entry.
        delta: The direction, one tensor per entry of ``params`` (same shape, dtype, device).
        loss: Zero-argument callable returning the loss at the current ``params``: a Python
            number or a 0-dim tensor.
        search: ``"linear"`` (the paper's), ``"doubling"``, ``"parabolic"`` or ``"warm_start"``
            (see :class:`~fastforward.FastForward`), or a :class:`SearchStrategy` of your own,
            called as ``search(ray, max_tau, start)`` (default: ``"parabolic"``, as there).
        max_tau: Largest τ evaluated, at most ``2**53`` (default: 1000).
        min_improvement: Land on the best point only if it beats ``L_0`` by this fraction of
            ``|L_0|``, else stay at ``W_n`` with ``tau == 0`` (default: 1e-3, as there).
        start: First τ tried by ``"warm_start"``, a hint passed on to every strategy; capped
            at ``max_tau`` (default: 1).
        anchor: Preallocated buffers for the copy of ``W_n`` (default: allocated here).
        foreach: Use ``torch._foreach_*`` kernels; ``None`` means yes.

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

        A strategy of your own only chooses the points; the stage still lands on the best one:

        >>> def coarse_grid(ray, max_tau, start):
        ...     for tau in (8, 16, 32):
        ...         ray.evaluate(tau)
        >>> w[0] = torch.tensor([0.0])
        >>> result = fast_forward_stage(w, [torch.tensor([1.0])], loss, search=coarse_grid)
        >>> result.tau, w[0].item(), result.evaluations
        (32, 32.0, 4)

    .. note::
        Memory: one copy of ``params`` (the anchor), unless ``anchor`` is given.
    """
    _check_search(search)
    max_tau = _check_int("max_tau", max_tau, 1, MAX_TAU_LIMIT)
    min_improvement = _check_min_improvement(min_improvement)
    start = min(_check_int("start", start, 1), max_tau)
    params, delta, anchor = _distinct(params, delta, anchor)
    return _run_stage(
        params,
        delta,
        loss,
        search=search,
        max_tau=max_tau,
        min_improvement=min_improvement,
        start=start,
        anchor=anchor,
        foreach=True if foreach is None else foreach,
    )


def _run_stage(
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
) -> StageResult:
    """:func:`fast_forward_stage` on arguments already checked (the wrapper's hot path).

    With ``reversed_delta``, ``delta`` holds ``-Δ`` (see :class:`Ray`).
    """
    with torch.no_grad():
        if anchor is None:
            anchor = [torch.empty_like(p) for p in params]
        _copy_(anchor, params, foreach=foreach)
        ray = Ray(
            params,
            anchor,
            delta,
            loss,
            max_tau=max_tau,
            foreach=foreach,
            min_improvement=min_improvement,
            reversed_delta=reversed_delta,
        )
        try:
            if math.isfinite(ray.evaluate(0)):
                _strategy(search)(ray, max_tau, start)
        finally:
            ray._land_()
    loss_after = ray.best_loss if ray.best_loss < math.inf else ray.loss_at_anchor
    rejected_tau, rejected_loss = ray._rejected or (None, None)
    return StageResult(
        ray.best_tau, ray.loss_at_anchor, loss_after, ray.evaluations, rejected_tau, rejected_loss
    )


def _distinct(
    params: object, delta: object, anchor: object
) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Check the parallel lists; keep the first entry of a tensor listed more than once.

    A tensor listed twice (``[w, w]``, or tied weights listed once per module) would be moved
    by ``2τΔ`` while the stage reports ``τ``: each tensor is moved exactly once.
    """
    params_ = _tensor_list("params", params)
    delta_ = _tensor_list("delta", delta)
    anchor_ = None if anchor is None else _tensor_list("anchor", anchor)
    if not params_:
        raise ValueError("fastforward: params is empty; pass the tensors the stage moves")
    for name, tensors in (("delta", delta_), ("anchor", anchor_)):
        if tensors is not None:
            _check_parallel(name, tensors, params_)
    first: dict[int, int] = {}  # id of a tensor -> index of its first entry
    for i, p in enumerate(params_):
        first.setdefault(id(p), i)
    if len(first) == len(params_):
        return params_, delta_, anchor_
    keep = list(first.values())
    return (
        [params_[i] for i in keep],
        [delta_[i] for i in keep],
        None if anchor_ is None else [anchor_[i] for i in keep],
    )


def _tensor_list(name: str, tensors: object) -> list[Tensor]:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"fastforward: {name} must be a list of tensors")
    return list(tensors)


def _check_parallel(name: str, tensors: list[Tensor], params: list[Tensor]) -> None:
    if len(tensors) != len(params):
        raise ValueError(
            f"fastforward: {name} has {len(tensors)} tensors for {len(params)} params; "
            "pass one per parameter, in the same order"
        )
    for i, (p, t) in enumerate(zip(params, tensors, strict=True)):
        if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
            raise ValueError(
                f"fastforward: {name}[{i}] is {tuple(t.shape)} {t.dtype} on {t.device}, but "
                f"params[{i}] is {tuple(p.shape)} {p.dtype} on {p.device}"
            )
