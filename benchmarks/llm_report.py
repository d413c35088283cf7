"""Tables and the loss-vs-FLOPs plot for ``bench_llm.py`` results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import anytime
from benchmarks.harness import TOLERANCE, markdown, pyplot, save_figure, saved


def _adam_by_group(results: Sequence[Any]) -> dict[str, Any]:
    return {r.group: r for r in results if not r.run.is_ff}


def _first_reaching(r: Any, target: float) -> int | None:
    """Index of the first curve point within the paper's ε of ``target`` (None: never)."""
    return next((i for i, (_, loss, _) in enumerate(r.curve) if loss <= target + TOLERANCE), None)


def _row(r: Any, adam: Any) -> list[str]:
    """The paper's metric (cost to reach Adam's final loss L*) and what the run did."""
    target = adam.final_loss
    cells = [r.name, str(r.steps), f"{r.final_loss:.4f}"]
    cells.append("" if r is adam else f"{r.final_loss / target - 1:+.2%}")
    mine, theirs = _first_reaching(r, target), _first_reaching(adam, target)
    reached = r is not adam and mine is not None and theirs is not None
    cells.append(f"{r.flops / 1e12:.2f}")
    if reached:
        cells += [
            saved(r.curve[mine][0], adam.curve[theirs][0]),
            saved(r.paper_curve[mine], adam.paper_curve[theirs]),
            saved(r.seconds_curve[mine][0], adam.seconds_curve[theirs][0]),
            saved(r.seconds_curve[mine][1], adam.seconds_curve[theirs][1]),
        ]
    else:
        cells += ["" if r is adam else "never"] + [""] * 3
    cells.append(f"{r.wall_seconds:.0f} / {r.cpu_seconds:.0f}")
    if r.run.is_ff:
        taus = ", ".join(map(str, r.taus)) + (" (cut)" if r.cut_by_budget else "")
        per_stage = ", ".join(map(str, r.stage_evaluations))
        gave_up = "" if r.gave_up_at_step is None else str(r.gave_up_at_step)
        gave_up += f" ({r.gave_up_because})" if r.gave_up_because else ""
        cells += [taus, f"{r.evaluations} ({per_stage})", gave_up]
    else:
        cells += ["", "", ""]
    return cells


COLUMNS = (
    "run", "steps", "final test loss", "vs Adam", "TFLOPs", "FLOPs saved to L*",
    "saved (paper 3x)", "wall saved", "CPU saved", "train s wall / CPU", "τ per stage",
    "val passes (per stage)", "gave up at step",
)  # fmt: skip


def tables(results: Sequence[Any]) -> str:
    """Markdown: the paper's metric per run, then the anytime table, grouped by Adam run."""
    adam = _adam_by_group(results)
    ordered = sorted(
        (r for r in results if r.group in adam),
        key=lambda r: (r.run.adapter, r.run.seed, r.run.lr, r.run.is_ff, r.run.search or ""),
    )
    budget = {group: a.budget_flops for group, a in adam.items()}
    text = markdown(COLUMNS, [_row(r, adam[r.group]) for r in ordered]) + "\n"
    if ordered:
        first = ordered[0]
        text += (
            f"\nL* is the final test loss of the Adam run at the same learning rate and seed; "
            f"savings are at the first test point within 1e-4 of it. One validation pass costs "
            f"{first.val_pass_flops / first.train_step_flops:.2f} training steps; a training "
            f"step costs {first.train_step_flops / first.forward_flops:.2f}x its forward pass "
            f"(the paper assumes 3x). Wall and CPU seconds: training only, single runs.\n"
        )
    text += "\n### Anytime: test loss at equal FLOPs, FLOPs to reach Adam's loss\n\n"
    text += anytime.table(ordered, adam, budget)
    return text


def plot(results: Sequence[Any], path: Path) -> None:
    """One panel per learning rate: test loss against FLOPs, Adam and Fast Forward, all seeds."""
    lrs = sorted({r.run.lr for r in results if r.run.adapter == "lora"})
    if not lrs:
        return
    fig, axes = pyplot().subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.8), squeeze=False)
    colors = {"Adam": "tab:blue", "parabolic": "tab:green", "linear": "tab:orange"}
    for ax, lr in zip(axes[0], lrs, strict=True):
        for r in results:
            if r.run.lr != lr or r.run.adapter != "lora":
                continue
            method = r.run.search or "Adam"
            xs = [point[0] / 1e12 for point in r.curve]
            ys = [point[1] for point in r.curve]
            style = "-" if r.run.seed == 0 else "--"
            label = f"{'Adam' if method == 'Adam' else 'FF ' + method} seed {r.run.seed}"
            # A step: the loss a user has is the last one measured, until the next measurement.
            ax.step(xs, ys, style, where="post", color=colors.get(method, "tab:gray"), label=label)
            stages = [(x, y) for x, y, p in zip(xs, ys, r.curve, strict=True) if p[2] == "stage"]
            if stages:
                ax.scatter(*zip(*stages, strict=True), s=12, color="tab:red", zorder=3)
        ax.set_title(f"lr {lr:g}")
        ax.set_xlabel("TFLOPs (stages included)")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("test loss (nats/token)")
    fig.suptitle("SmolLM2-135M-Instruct, LoRA r=8 on fortunes (red: after a stage)", fontsize=9)
    save_figure(fig, path, dpi=110)
