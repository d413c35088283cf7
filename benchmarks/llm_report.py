"""Tables and the loss-vs-FLOPs plot for ``bench_llm.py`` results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import anytime
from benchmarks.harness import TOLERANCE, markdown, pyplot, save_figure, saved

INTERVAL = 6  # bench_llm's: the steps from one stage to the next


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
        key=lambda r: (r.run.baseline, r.run.seed, r.run.lr, r.run.is_ff, r.name),
    )
    budget = {group: a.budget_flops for group, a in adam.items()}
    text = markdown(COLUMNS, [_row(r, adam[r.group]) for r in ordered]) + "\n"
    if ordered:
        first = ordered[0]
        text += (
            f"\nL* is the final test loss of the run without Fast Forward (Adam, or the peer "
            f"it wraps) at the same learning rate and seed; "
            f"savings are at the first test point within 1e-4 of it. One validation pass costs "
            f"{first.val_pass_flops / first.train_step_flops:.2f} training steps; a training "
            f"step costs {first.train_step_flops / first.forward_flops:.2f}x its forward pass "
            f"(the paper assumes 3x). Wall and CPU seconds: training only, single runs.\n"
        )
    converged = any(r.train_curve for r in ordered)
    text += "\n### Anytime: test loss at equal FLOPs, FLOPs to reach Adam's loss\n\n"
    text += anytime.table(ordered, adam, budget, CONVERGED_FRACTIONS if converged else FRACTIONS)
    if converged:
        text += diagnosis(ordered, adam)
    return text


CONVERGED_FRACTIONS = (0.25, 0.50, 0.75, 1.00)
FRACTIONS = anytime.FRACTIONS


def _at_step(r: Any, step: int, values: Sequence[float], kind: str | None = None) -> float | None:
    """``values`` (parallel to ``r.curve``) at the last measurement after ``step`` steps.

    With ``kind``, only measurements of that kind count (e.g. ``"before stage"``).
    """
    found = [
        value
        for s, value, point in zip(r.steps_curve, values, r.curve, strict=True)
        if s == step and (kind is None or point[2] == kind)
    ]
    return found[-1] if found else None


def _test_at(r: Any, step: int, kind: str | None = None) -> float | None:
    return _at_step(r, step, [loss for _, loss, _ in r.curve], kind)


def _relative(mine: float | None, theirs: float | None, lead: bool = False) -> str:
    """``mine`` against ``theirs`` in percent; as a lead (positive: lower) with ``lead``."""
    if mine is None or theirs is None:
        return ""
    return f"{1 - mine / theirs:+.2%}" if lead else f"{mine / theirs - 1:+.2%}"


def _reading(test: float, train: float) -> str:
    """What Fast Forward's relative test and train losses against Adam's say (0.1% margins)."""
    if test < -1e-3:
        return "ahead"
    if train < -1e-3:
        return "overfit: lower train, higher test"
    return "pre-empted: both higher" if test > 1e-3 else "level"


def diagnosis(ordered: Sequence[Any], adam: dict[str, Any]) -> str:
    """The converged preset's reading: best and final losses, train against test, per stage.

    Fast Forward is compared with Adam at equal optimizer steps: where its lead came from
    jumps that training would have made anyway, the lead shrinks while both train on.
    """
    losses = []
    for r in ordered:
        best = min(range(len(r.curve)), key=lambda i: r.curve[i][1])
        losses.append([
            r.name, f"{r.final_loss:.4f}", f"{r.curve[best][1]:.4f} (step {r.steps_curve[best]})",
            f"{r.train_curve[-1]:.4f}", f"{r.final_loss - r.train_curve[-1]:+.4f}",
        ])  # fmt: skip
    equal, stages = [], []
    for r in ordered:
        base = adam[r.group]
        if not r.run.is_ff:
            continue
        step = max(set(r.steps_curve) & set(base.steps_curve))
        test, base_test = _test_at(r, step), _test_at(base, step)
        train, base_train = _at_step(r, step, r.train_curve), _at_step(base, step, base.train_curve)
        if test and base_test and train and base_train:
            reading = _reading(test / base_test - 1, train / base_train - 1)
            equal.append([r.name, str(step), _relative(test, base_test),
                          _relative(train, base_train), reading])  # fmt: skip
        stage_steps = [s for s, point in zip(r.steps_curve, r.curve, strict=True)
                       if point[2] == "stage"]  # fmt: skip
        for at, tau in zip(stage_steps, r.taus, strict=False):
            gain = _relative(_test_at(r, at), _test_at(r, at, "before stage"), lead=True)
            leads = [_relative(_test_at(r, at), _test_at(base, at), lead=True)]
            for later in (at + INTERVAL, at + 3 * INTERVAL):  # before the stage due then, if any
                mine = _test_at(r, later, "before stage")
                mine = _test_at(r, later) if mine is None else mine
                leads.append(_relative(mine, _test_at(base, later), lead=True))
            stages.append([r.name, str(at), str(tau), gain, *leads])
    return (
        "\n### Converged: final and best test loss (what early stopping keeps), train loss\n\n"
        + markdown(
            [
                "run",
                "final test",
                "best test (at step)",
                "final train (probe)",
                "test - train",
            ],
            losses,
        )
        + "\n\n### At equal optimizer steps: Fast Forward against Adam, last common check\n\n"
        + markdown(["run", "step", "test vs Adam", "train vs Adam", "reading"], equal)
        + "\n\n### Stage by stage: its test-loss gain, and the lead over Adam it leaves\n\n"
        "Lead: how much lower Fast Forward's test loss is than Adam's after the same optimizer "
        "steps, right after the stage and one and three intervals later (measured before the "
        "stage due then, so that later stages' jumps are not counted).\n\n"
        + markdown(
            [
                "run",
                "stage after step",
                "τ",
                "test gain of the stage",
                "lead after it",
                "lead 1 interval later",
                "lead 3 intervals later",
            ],
            stages,
        )
        + "\n"
    )


def _is_peer(r: Any) -> bool:
    return bool(r.run.loraplus_ratio) or r.run.adapter == "rslora"


def _is_default_0_2(r: Any) -> bool:
    run = r.run
    return run.search == "parabolic" and run.cost_aware and run.delta_span == "interval"


def peer_table(results: Sequence[Any]) -> str:
    """Markdown (empty without peers): LoRA+ and rsLoRA, alone and under Fast Forward, each
    seed's runs against that seed's tuned Adam (plain LoRA, the lowest final test loss; 0.2's
    default on it beside): the anytime table at 25..100% of its FLOPs, and the best test loss
    along each curve."""
    text = ""
    for seed in sorted({r.run.seed for r in results if _is_peer(r)}):
        plain = [r for r in results if r.run.seed == seed and r.run.baseline == "lora"]
        adams = [r for r in plain if not r.run.is_ff]
        if not adams:
            continue
        tuned = min(adams, key=lambda r: r.final_loss)
        rows = [tuned] + [r for r in plain if _is_default_0_2(r) and r.run.lr == tuned.run.lr]
        rows += sorted(
            (r for r in results if r.run.seed == seed and _is_peer(r)),
            key=lambda r: (r.run.adapter, r.run.loraplus_ratio, r.run.lr, r.run.is_ff),
        )
        curves = [_AsTuned(r.name, r.curve) for r in rows]
        anytime_rows = anytime.table(
            curves, {"tuned": curves[0]}, {"tuned": tuned.budget_flops}, CONVERGED_FRACTIONS
        )
        text += (
            f"\n### Peers, seed {seed}: against tuned Adam (lr {tuned.run.lr:g}, "
            f"final {tuned.final_loss:.4f})\n\n"
            + anytime_rows
            + "\n"
            + markdown(
                ["run", "best test (at step)", "final test", "val passes", "τ per stage"],
                [_best_row(r) for r in rows],
            )
            + "\n"
        )
    return text.lstrip("\n")


class _AsTuned:
    """A run as ``anytime.table`` reads it, every one judged against tuned Adam."""

    group = "tuned"

    def __init__(self, name: str, curve: Sequence[tuple[int, float, str]]) -> None:
        self.name, self.curve = name, curve


def _best_row(r: Any) -> list[str]:
    best = min(range(len(r.curve)), key=lambda i: r.curve[i][1])
    taus = ", ".join(map(str, r.taus))
    passes = str(r.evaluations) if r.run.is_ff else ""
    at = f" (step {r.steps_curve[best]})" if r.steps_curve else ""  # not in the oldest runs
    return [r.name, f"{r.curve[best][1]:.4f}{at}", f"{r.final_loss:.4f}", passes, taus]


def plot(results: Sequence[Any], path: Path) -> None:
    """One panel per learning rate: test loss against FLOPs, Adam and Fast Forward, all seeds."""
    lrs = sorted({r.run.lr for r in results if r.run.baseline == "lora"})
    if not lrs:
        return
    fig, axes = pyplot().subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.8), squeeze=False)
    colors = {"Adam": "tab:blue", "parabolic": "tab:green", "linear": "tab:orange"}
    for ax, lr in zip(axes[0], lrs, strict=True):
        for r in results:
            if r.run.lr != lr or r.run.baseline != "lora":  # plain LoRA + Adam, no schedule
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
