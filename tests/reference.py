"""Slow, obviously correct references: what a stage must do, and a whole Fast Forward run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from fastforward import FastForward, FastForwardStats, StageRecord, StageResult, fast_forward_stage

# The algorithm this module's reference implements, and the library's default before 0.2:
# Δ over the last step, no cost-aware rule.
PAPER_POLICY = {"delta_span": "step", "cost_aware": False}


def paper_fast_forward(*args: object, **kwargs: object) -> FastForward:
    """``FastForward(*args, **kwargs)`` with ``PAPER_POLICY`` unless ``kwargs`` say otherwise."""
    return FastForward(*args, **{**PAPER_POLICY, **kwargs})  # type: ignore[arg-type]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: equal bits compare equal, so ``-0.0`` and NaN payloads count."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def quadratic_along_ray(
    a: np.ndarray, x_star: np.ndarray, w: np.ndarray, delta: np.ndarray
) -> tuple[float, float, float]:
    """Coefficients of ``φ(τ) = f(w + τΔ) = φ0 + b τ + ½ c τ²`` for ``f(x) = ½(x-x*)ᵀA(x-x*)``."""
    e = w - x_star
    return 0.5 * e @ a @ e, (a @ e) @ delta, delta @ a @ delta


def integer_minimiser(b: float, c: float, max_tau: int) -> int:
    """The first integer local minimum of ``φ`` on ``{0, ..., max_tau}`` (``c > 0``).

    ``φ(τ) < φ(τ-1)`` iff ``τ < ½ - b/c``: the τ accepted by the paper's linear search.
    """
    threshold = 0.5 - b / c
    return int(min(max_tau, max(0, math.ceil(threshold) - 1)))


class ReferenceFastForward:
    """Fast Forward as a plain loop over the documented schedule (docs/algorithm.md).

    In the spirit of schedule_free's ``*Reference`` optimizers: slow, with explicit ``.clone()``s,
    a stage's ``Δ`` computed as ``W_n - W_{n-1}`` from a copy taken before step ``n``, and the
    bookkeeping in plain attributes. The stage itself is the public
    :func:`fastforward.fast_forward_stage` (tested against the search rules in test_stage.py and
    test_search.py); what this class owns is the schedule around it:

    - a stage follows step ``n`` when ``n > warmup`` and ``(n - warmup) % interval == 0``, or,
      with ``adaptive_interval``, when ``n - last_scheduled_step >= current_interval``;
    - ``Δ`` all zero or not finite, or ``L_0`` not finite: a skipped stage, nothing else changes;
    - ``max_tau_ratio`` caps the steps a stage simulates, ``τ * span``, at
      ``floor(ratio * current_interval)``, at least 1; τ at least 1, at most ``max_tau``; the
      search's ``start`` hint is the previous stage's τ, at least 1, at most that cap;
    - after a stage with ``τ >= current_interval`` the interval halves, after one with ``τ <= 1``
      it doubles, clamped to ``adaptive_interval``;
    - after ``patience`` stages in a row that accepted ``τ = 0`` there are no more stages;
    - ``delta_span="interval"``: ``Δ = W_n - W_s``, where ``W_s`` is a copy taken before the
      interval's first step ``s = n - interval + 1`` if Fast Forward was active then and has not
      been disabled since (else the stage is skipped); τ counts intervals: the record's
      ``delta_steps`` is ``interval`` and ``simulated_steps`` grows by ``τ * interval``.

    ``stats`` is the wrapper's own :class:`fastforward.FastForwardStats`, filled the same way, with
    every timing left at 0 (compare with :func:`without_timings`). ``cost_aware``, ``on_stage``
    and ``val_closure(stage=k)`` are not modelled.

    The wrapper lands on bitwise the same points although it keeps ``-Δ = W_{n-1} - W_n`` and
    moves to ``W_n + (-τ)(-Δ)``: negation is exact and rounding is symmetric about zero.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module,
        val_closure: Callable[[], object],
        interval: int = 6,
        *,
        warmup: int = 0,
        max_tau: int = 1000,
        max_tau_ratio: float | None = None,
        adaptive_interval: tuple[int, int] | None = None,
        patience: int | None = 3,
        search: str | Callable[..., None] = "parabolic",
        min_improvement: float = 1e-3,
        delta_span: str = "step",
        enabled: bool = True,
    ) -> None:
        self.optimizer, self.model, self.val_closure = optimizer, model, val_closure
        self.interval, self.warmup, self.patience = interval, warmup, patience
        self.max_tau, self.max_tau_ratio = max_tau, max_tau_ratio
        self.adaptive_interval = adaptive_interval
        self.search, self.min_improvement = search, min_improvement
        self.span = interval if delta_span == "interval" else 1
        self.interval_start: tuple[int, list[torch.Tensor]] | None = None  # (s, W_s)
        self.enabled = enabled
        self.stats = FastForwardStats()
        self.gave_up = False
        self.failed_stages_in_a_row = 0
        self.last_tau = 0
        self.current_interval = interval
        self.last_scheduled_step = warmup

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        if not value:
            self.interval_start = None

    @property
    def active(self) -> bool:
        return self.enabled and not self.gave_up

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        n = self.stats.optimizer_steps + 1
        due = self.stage_due(n)
        params = self.trainable_params()
        if self.stage_due(n + self.span - 1):  # the first step of an interval that ends in one
            self.interval_start = (n, [p.detach().clone() for p in params])
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.stats.optimizer_steps = n
        if due:
            self.last_scheduled_step = n
            start = self.interval_start
            self.interval_start = None
            if start is None or start[0] != n - self.span + 1:
                self.stats.skipped_stages += 1
            else:
                self.stage(n, params, start[1])
        return loss

    def stage_due(self, n: int) -> bool:
        if not self.active or n <= self.warmup:
            return False
        if self.adaptive_interval is None:
            return (n - self.warmup) % self.interval == 0
        return n - self.last_scheduled_step >= self.current_interval

    def trainable_params(self) -> list[torch.Tensor]:
        """Every ``requires_grad`` tensor of the groups, once each, in group order."""
        params: list[torch.Tensor] = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and not any(p is q for q in params):
                    params.append(p)
        return params

    def max_tau_now(self) -> int:
        if self.max_tau_ratio is None:
            return self.max_tau
        steps = max(1, math.floor(self.max_tau_ratio * self.current_interval))
        return min(self.max_tau, max(1, steps // self.span))  # whole Δs within that many steps

    def stage(self, n: int, params: list[torch.Tensor], before: list[torch.Tensor]) -> None:
        delta = [p.detach().clone() - w for p, w in zip(params, before, strict=True)]  # Δ
        all_zero = all(bool((d == 0).all()) for d in delta)
        finite = all(bool(d.isfinite().all()) for d in delta)
        if not params or all_zero or not finite:
            self.stats.skipped_stages += 1
            return
        max_tau = self.max_tau_now()
        with _in_eval_mode(self.model):
            result = fast_forward_stage(
                params,
                delta,
                self.validation_loss,
                search=self.search,
                max_tau=max_tau,
                min_improvement=self.min_improvement,
                start=min(max(1, self.last_tau), max_tau),
            )
        if not math.isfinite(result.loss_before):
            self.stats.skipped_stages += 1
            return
        self.record(n, result)

    def validation_loss(self) -> object:
        self.stats.evaluations += 1  # a call that raises has been paid for too
        return self.val_closure()

    def record(self, n: int, result: StageResult) -> None:
        stats = self.stats
        stats.stages += 1
        stats.simulated_steps += result.tau * self.span
        stats.history.append(
            StageRecord(
                n,
                result.tau,
                result.loss_before,
                result.loss_after,
                result.evaluations,
                0.0,
                result.rejected_tau,
                result.rejected_loss,
                delta_steps=self.span,
            )
        )
        self.last_tau = result.tau
        if self.adaptive_interval is not None:
            shortest, longest = self.adaptive_interval
            if result.tau >= self.current_interval:
                self.current_interval = max(shortest, self.current_interval // 2)
            elif result.tau <= 1:
                self.current_interval = min(longest, self.current_interval * 2)
        self.failed_stages_in_a_row = self.failed_stages_in_a_row + 1 if result.tau == 0 else 0
        if self.patience is not None and self.failed_stages_in_a_row >= self.patience:
            self.gave_up = True
            stats.gave_up_at_step, stats.gave_up_because = n, "patience"


@contextmanager
def _in_eval_mode(model: torch.nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def without_timings(stats: FastForwardStats) -> FastForwardStats:
    """``stats`` with every wall time set to 0, to compare the wrapper's with the reference's."""
    history = [dataclasses.replace(record, seconds=0.0) for record in stats.history]
    return dataclasses.replace(stats, stage_seconds=0.0, history=history)


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of every parameter of ``model``, trainable or not."""
    return [p.detach().clone() for p in model.parameters()]


def all_bitwise_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
