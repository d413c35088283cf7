"""Fast Forward as the paper's released training script does it, for comparison only.

The reference script (AdirRahamim/Fast-Forward, ``main.py``) differs from the library in two ways
that this class reproduces: it never evaluates the loss at ``W_n``, so the first simulated step is
always taken, and when the loss stops improving it keeps the last, worse step. Its unbounded loop
is capped at ``max_tau`` here so that a benchmark always ends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class PaperFastForward:
    """Drive ``optimizer`` and run the reference script's stage every ``interval`` steps.

    Args:
        optimizer: the wrapped optimizer; only its ``step`` and ``zero_grad`` are used.
        params: the trainable tensors a stage moves.
        val_loss: evaluates the tiny validation set (called under ``torch.no_grad()``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[Tensor],
        val_loss: Callable[[], Tensor],
        interval: int = 6,
        max_tau: int = 1000,
    ) -> None:
        self.optimizer, self.params, self.val_loss = optimizer, params, val_loss
        self.interval, self.max_tau = interval, max_tau
        self.steps = 0
        self.taus: list[int] = []
        self.stage_evaluations: list[int] = []
        self.evaluations = 0

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        stage_due = (self.steps + 1) % self.interval == 0
        if stage_due:
            previous = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        self.steps += 1
        if stage_due:
            self._stage([p.detach() - q for p, q in zip(self.params, previous, strict=True)])

    @torch.no_grad()
    def _stage(self, delta: list[Tensor]) -> None:
        best = float("inf")
        tau = 0
        evaluations_before = self.evaluations
        while tau < self.max_tau:
            torch._foreach_add_(self.params, delta)
            tau += 1
            loss = float(self.val_loss())
            self.evaluations += 1
            if not loss < best:  # the worse step stays applied
                break
            best = loss
        self.taus.append(tau)
        self.stage_evaluations.append(self.evaluations - evaluations_before)
