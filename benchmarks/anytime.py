"""Read a run at every budget, not only at the end: loss at equal FLOPs, FLOPs to a loss.

A run's *curve* is its list of test measurements ``(flops, loss, kind)`` in the order they were
taken, ``flops`` counting everything spent so far (steps, validation passes, moves). The loss
of a run at a budget is that of its last measurement within the budget: what a user who stopped
there would have. The paper's metric, FLOPs to reach 5-epoch Adam's loss, is one cell of this
table (100%); the others show whether a lead taken early lasts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.harness import TOLERANCE

FRACTIONS = (0.10, 0.25, 0.50, 1.00)  # of Adam's budget: where losses are compared
TARGET_FRACTIONS = (0.25, 0.50, 1.00)  # Adam's loss at these budgets: the targets to reach
# A run stopped at a budget may overshoot it by the parameter moves of its last pass (2 FLOPs
# per trainable element, ~1e-8 of the budget in bench_llm): such a point is within the budget.
BUDGET_SLACK = 1e-6

Curve = Sequence[tuple[int, float, str]]


def loss_at(curve: Curve, flops: float) -> float:
    """The loss of the last measurement with at most ``flops`` spent (NaN if none)."""
    within = [loss for spent, loss, _ in curve if spent <= flops * (1 + BUDGET_SLACK)]
    return within[-1] if within else float("nan")


def flops_to_reach(curve: Curve, target: float, tolerance: float = TOLERANCE) -> int | None:
    """FLOPs spent at the first measurement with loss <= ``target + tolerance`` (None: never)."""
    return next((spent for spent, loss, _ in curve if loss <= target + tolerance), None)


def table(
    runs: Sequence[Any],
    baseline: dict[str, Any],
    budget: dict[str, int],
    fractions: Sequence[float] = FRACTIONS,
) -> str:
    """Markdown: each run's loss at equal FLOPs and its FLOPs to reach Adam's loss.

    Args:
        runs: objects with ``name``, ``group`` and ``curve``.
        baseline: the Adam run of each group, by group; it sets the targets and the budget.
        budget: Adam's total FLOPs per group (100%).
        fractions: the budgets, as fractions of Adam's, where losses are compared.

    Each FLOPs cell is the saving against Adam reaching the same loss (``+40%``: 40% fewer
    FLOPs); ``never`` means the run did not reach it within Adam's budget. Loss cells of
    other runs carry their difference to Adam at the same budget.
    """
    head = [f"loss @{f:.0%}" for f in fractions] + [
        f"FLOPs to Adam@{f:.0%}" for f in TARGET_FRACTIONS
    ]
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for run in runs:
        adam, total = baseline[run.group], budget[run.group]
        cells = []
        for fraction in fractions:
            mine, theirs = (
                loss_at(run.curve, fraction * total),
                loss_at(adam.curve, fraction * total),
            )
            diff = "" if run is adam else f" ({mine / theirs - 1:+.1%})"
            cells.append(f"{mine:.4f}{diff}")
        for fraction in TARGET_FRACTIONS:
            target = loss_at(adam.curve, fraction * total)
            mine_f, theirs_f = flops_to_reach(run.curve, target), flops_to_reach(adam.curve, target)
            if mine_f is None or not theirs_f:
                cells.append("never" if mine_f is None else "")
            else:
                cells.append(f"{1 - mine_f / theirs_f:+.0%}")
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
