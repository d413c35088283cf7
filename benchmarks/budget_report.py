"""Tables and plots for ``bench_budget.py``: the search study and the learning-rate sweep."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import anytime
from benchmarks.harness import TOLERANCE, markdown, pyplot, save_figure, saved


def reached(outcome: Any, loss: float) -> tuple[int, int, float] | None:
    """(step, FLOPs, train seconds) of the first test evaluation at or below ``loss``, if any."""
    for step, flops, seconds, test_loss in outcome.curve:
        if test_loss <= loss + TOLERANCE:
            return step, flops, seconds
    return None


def loss_at_flops(outcome: Any, budget: int) -> float:
    """The test loss of the last evaluation made within ``budget`` FLOPs (the curve starts at 0)."""
    return [loss for _, flops, _, loss in outcome.curve if flops <= budget][-1]


def _mean_tau(outcome: Any) -> str:
    return f"{statistics.mean(outcome.taus):.1f}" if outcome.taus else "-"


def _evals_per_stage(outcome: Any) -> str:
    return f"{outcome.evaluations / outcome.stages:.1f}" if outcome.stages else "-"


def search_table(results: list[Any]) -> str:
    """One block per learning rate; savings are against that lr's Adam run."""
    header = [
        "lr", "run", "stages", "evals/stage", "mean τ", "max τ", "val evals",
        "FLOPs saved to Adam's loss", "time saved to Adam's loss", "final test loss", "vs Adam",
        "test loss at Adam's FLOPs", "vs Adam", "gave up at",
    ]  # fmt: skip
    rows = []
    adam = {o.run.lr: o for o in results if not o.run.is_ff}
    for o in results:
        base = adam[o.run.lr]
        hit = reached(o, base.final_loss) if o.run.is_ff else None
        rows.append([
            f"{o.run.lr:g}",
            o.run.label,
            str(o.stages) if o.run.is_ff else "",
            _evals_per_stage(o) if o.run.is_ff else "",
            _mean_tau(o) if o.run.is_ff else "",
            str(max(o.taus, default=0)) if o.run.is_ff else "",
            str(o.evaluations) if o.run.is_ff else "",
            (saved(hit[1], base.flops) if hit else "not reached") if o.run.is_ff else "",
            (saved(hit[2], base.seconds) if hit else "not reached") if o.run.is_ff else "",
            f"{o.final_loss:.4f}",
            f"{o.final_loss - base.final_loss:+.4f}" if o.run.is_ff else "",
            f"{loss_at_flops(o, base.flops):.4f}",
            f"{loss_at_flops(o, base.flops) - base.final_loss:+.4f}" if o.run.is_ff else "",
            str(o.gave_up_at_step or "") if o.run.is_ff else "",
        ])  # fmt: skip
    return markdown(header, rows)


def write_search_study(results: list[Any], tuned: Any, out: Path) -> None:
    table = search_table(results)
    linear = {o.run.lr: o.evaluations for o in results if o.run.label == "linear (paper)"}
    lines = [
        table,
        "",
        "Saved to Adam's loss: 1 - (cost when the run first reached the final test loss of "
        "plain Adam at the same lr) / (cost of Adam's whole run); FLOPs exact, time one repeat. "
        "Final test loss: after the same 5 epochs of optimizer steps; at Adam's FLOPs: the last "
        "test evaluation the run made within the FLOPs of Adam's whole run (stages cost FLOPs, "
        "so this is the same compute budget).",
        "Validation evaluations relative to linear search: "
        + ", ".join(
            f"{o.run.label} at lr {o.run.lr:g}: {o.evaluations / linear[o.run.lr]:.2f}"
            for o in results
            if o.run.is_ff and linear.get(o.run.lr)
        ),
        "",
    ]
    (out / "search_table.md").write_text("\n".join(lines))
    print(table)


def lr_table(results: list[Any], tuned: Any) -> str:
    header = [
        "lr", "Adam final", "FF final", "FF at Adam's FLOPs", "Adam best", "FF best", "gap closed",
        "Adam reaches tuned at step", "FF reaches tuned at step", "Adam GFLOPs", "FF GFLOPs",
        "FF / Adam time", "stages", "mean τ", "evals/stage", "FF gave up at",
    ]  # fmt: skip
    rows = []
    pairs = _pairs(results)
    for lr, (adam, ff) in pairs.items():
        closed = gap_closed(adam, ff, tuned)
        adam_hit, ff_hit = reached(adam, tuned.final_loss), reached(ff, tuned.final_loss)
        rows.append([
            f"{lr:g}" + (" (tuned)" if lr == tuned.run.lr else ""),
            f"{adam.final_loss:.4f}",
            f"{ff.final_loss:.4f}",
            f"{loss_at_flops(ff, adam.flops):.4f}",
            f"{adam.best_loss:.4f}",
            f"{ff.best_loss:.4f}",
            f"{closed:.0%}" if closed is not None else "-",
            str(adam_hit[0]) if adam_hit else "never",
            str(ff_hit[0]) if ff_hit else "never",
            f"{adam.flops / 1e9:.0f}",
            f"{ff.flops / 1e9:.0f}",
            f"{ff.seconds / adam.seconds:.2f}",
            str(ff.stages),
            _mean_tau(ff),
            _evals_per_stage(ff),
            str(ff.gave_up_at_step or "-"),
        ])  # fmt: skip
    return markdown(header, rows)


def gap_closed(adam: Any, ff: Any, tuned: Any) -> float | None:
    """The fraction of the distance from Adam's final loss to tuned Adam's that ``ff`` covers."""
    gap = adam.final_loss - tuned.final_loss
    return (adam.final_loss - ff.final_loss) / gap if gap > TOLERANCE else None


def seed_table(by_seed: dict[int, tuple[list[Any], Any]]) -> str:
    """The learning-rate sweep side by side for several seeds: ``{seed: (results, tuned)}``."""
    seeds = sorted(by_seed)
    header = ["lr"] + [
        f"seed {seed}: {column}" for seed in seeds for column in ("Adam", "FF", "gap closed")
    ]
    pairs = {seed: _pairs(results) for seed, (results, _) in by_seed.items()}
    rows = []
    for lr in pairs[seeds[0]]:
        row = [f"{lr:g}"]
        for seed in seeds:
            adam, ff = pairs[seed][lr]
            closed = gap_closed(adam, ff, by_seed[seed][1])
            tuned = " (tuned)" if lr == by_seed[seed][1].run.lr else ""
            row += [
                f"{adam.final_loss:.4f}{tuned}",
                f"{ff.final_loss:.4f}",
                f"{closed:.0%}" if closed is not None else "-",
            ]
        rows.append(row)
    return markdown(header, rows)


def _pairs(results: list[Any]) -> dict[float, tuple[Any, Any]]:
    adam = {o.run.lr: o for o in results if not o.run.is_ff}
    ff = {o.run.lr: o for o in results if o.run.is_ff}
    return {lr: (adam[lr], ff[lr]) for lr in sorted(adam)}


def sweep_cost(results: list[Any], tuned: Any) -> str:
    """The Adam sweep's FLOPs against single Fast Forward runs at untuned learning rates."""
    pairs = _pairs(results)
    sweep = sum(adam.flops for adam, _ in pairs.values())
    lines = [
        f"The whole Adam sweep ({len(pairs)} runs) cost {sweep / 1e9:.0f} GFLOPs to find the tuned "
        f"lr {tuned.run.lr:g} (final test loss {tuned.final_loss:.4f}). One Fast Forward run "
        "instead, at a single untuned lr:",
        "",
    ]
    for lr, (adam, ff) in pairs.items():
        if lr == tuned.run.lr:
            continue
        lines.append(
            f"- lr {lr:g}: {ff.flops / 1e9:.0f} GFLOPs ({ff.flops / sweep:.1%} of the sweep), "
            f"final test loss {ff.final_loss:.4f} ({ff.final_loss - tuned.final_loss:+.4f} vs "
            f"tuned Adam; plain Adam at this lr {adam.final_loss - tuned.final_loss:+.4f})"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class _Curve:
    """A run as ``anytime.table`` reads it."""

    name: str
    group: str
    curve: list[tuple[int, float, str]]


def _name(outcome: Any) -> str:
    return f"{outcome.run.label}{_peer(outcome)} lr={outcome.run.lr:g}{_scheduled(outcome)}"


def _as_curve(outcome: Any, group: str) -> _Curve:
    return _Curve(_name(outcome), group, [(flops, loss, "") for _, flops, _, loss in outcome.curve])


def anytime_table(results: list[Any], fractions: Sequence[float] = anytime.FRACTIONS) -> str:
    """Loss at equal FLOPs and FLOPs to Adam's loss, each run against Adam (or the peer it
    wraps) at its lr."""
    runs = [_as_curve(o, _group(o)) for o in results]
    adam = {r.group: r for r, o in zip(runs, results, strict=True) if not o.run.is_ff}
    budget = {group: r.curve[-1][0] for group, r in adam.items()}
    return anytime.table(runs, adam, budget, fractions)


def policy_table(results: list[Any]) -> str:
    """The cost-aware rule against the defaults: passes, stages, when it stepped aside."""
    lines = [
        "| run | final test loss | vs Adam | val passes (per stage) | τ per stage | off at step |",
        "|---|---|---|---|---|---|",
    ]
    adam = {_group(o): o for o in results if not o.run.is_ff}
    for o in results:
        vs = "" if not o.run.is_ff else f"{o.final_loss / adam[_group(o)].final_loss - 1:+.2%}"
        per_stage = ", ".join(map(str, o.stage_evaluations))  # empty in runs saved before it
        passes = f"{o.evaluations} ({per_stage})" if per_stage else str(o.evaluations)
        because = f" ({o.gave_up_because})" if o.gave_up_because else ""
        off = "" if o.gave_up_at_step is None else f"{o.gave_up_at_step}{because}"
        taus = ", ".join(map(str, o.taus))
        lines.append(
            f"| {_name(o)} | {o.final_loss:.4f} | {vs} | "
            + (f"{passes} | {taus} | {off} |" if o.run.is_ff else " |  |  |")
        )
    return "\n".join(lines) + "\n"


def write_policy_study(results: list[Any], out: Path) -> None:
    text = "\n".join([policy_table(results), anytime_table(results)])
    (out / "policy_table.md").write_text(text)


LASTING_FRACTIONS = (0.25, 0.50, 0.75, 1.00)


def _group(outcome: Any) -> str:
    """The runs compared with one run without Fast Forward: same lr, schedule and peer."""
    return f"{outcome.run.lr:g}{_scheduled(outcome)}{_peer(outcome)}"


def _scheduled(outcome: Any) -> str:
    return f", {outcome.run.schedule} schedule" if outcome.run.schedule else ""


def _peer(outcome: Any) -> str:
    """What the run trains with instead of LoRA and Adam: " rsLoRA", " LoRA+16", or "" (those)."""
    run = outcome.run
    rs = " rsLoRA" if run.adapter == "rslora" else ""
    return rs + (f" LoRA+{run.loraplus_ratio:g}" if run.loraplus_ratio else "")


def peer_table(results: list[Any]) -> str:
    """Every run against tuned Adam (the first run without Fast Forward and peer): the losses
    at 25..100% of its FLOPs, FLOPs to its losses, and the best test loss along each curve."""
    tuned = next((o for o in results if not o.run.is_ff and not o.run.is_peer), None)
    if tuned is None:
        return ""
    rows = sorted(results, key=lambda o: (_peer(o), o.run.lr, o.run.is_ff))
    rows.remove(tuned)
    rows.insert(0, tuned)
    curves = [_as_curve(o, "tuned") for o in rows]
    best = [
        f"| {_name(o)} | {o.best_loss:.4f} | {o.final_loss:.4f} | "
        f"{o.best_loss / tuned.final_loss - 1:+.2%} |"
        for o in rows
    ]
    return (
        f"Against tuned Adam (lr {tuned.run.lr:g}, final {tuned.final_loss:.4f}):\n\n"
        + anytime.table(curves, {"tuned": curves[0]}, {"tuned": tuned.flops}, LASTING_FRACTIONS)
        + "\n| run | best test loss | final | best vs tuned Adam's final |\n|---|---|---|---|\n"
        + "\n".join(best)
        + "\n"
    )


def write_peer_study(results: list[Any], out: Path) -> None:
    """``peer_table.md``: each wrapped run against its peer alone (passes, stages, losses at
    25..100%), then every run against tuned Adam."""
    text = "\n".join([
        policy_table(results), anytime_table(results, LASTING_FRACTIONS), peer_table(results)
    ])  # fmt: skip
    (out / "peer_table.md").write_text(text)
    print(text)


def write_warmup_study(results: list[Any], out: Path) -> None:
    """``warmup_table.md``: stages under a warmup schedule, and the losses at 25..100%."""
    text = "\n".join([policy_table(results), anytime_table(results, LASTING_FRACTIONS)])
    (out / "warmup_table.md").write_text(text)
    print(text)


def write_lasting_study(results: list[Any], out: Path) -> None:
    """``lasting_table.md``: passes and stages, then the losses at 25..100% of Adam's FLOPs."""
    text = "\n".join([policy_table(results), anytime_table(results, LASTING_FRACTIONS)])
    (out / "lasting_table.md").write_text(text)
    print(text)


def write_lr_study(results: list[Any], tuned: Any, out: Path) -> None:
    table = lr_table(results, tuned)
    text = "\n".join([table, "", sweep_cost(results, tuned), ""])
    (out / "lr_table.md").write_text(text)
    (out / "anytime_table.md").write_text(anytime_table(results))
    plot_final_loss_vs_lr(results, tuned, out / "final_loss_vs_lr.png")
    plot_small_lr_vs_tuned(results, tuned, out / "small_lr_vs_tuned_adam.png")
    print(text)


def plot_final_loss_vs_lr(results: list[Any], tuned: Any, path: Path) -> None:
    pairs = _pairs(results)
    lrs = list(pairs)
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    ax.plot(lrs, [a.final_loss for a, _ in pairs.values()], "o-", label="Adam")
    ax.plot(lrs, [f.final_loss for _, f in pairs.values()], "s-", label="Fast Forward (defaults)")
    ax.axhline(tuned.final_loss, color="gray", linestyle=":", label="tuned Adam")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final test loss after 5 epochs (nats/byte)")
    ax.set_title("LoRA r=8, same budget: final loss across the learning-rate sweep")
    ax.legend()
    save_figure(fig, path)


def plot_small_lr_vs_tuned(results: list[Any], tuned: Any, path: Path, count: int = 3) -> None:
    """Test loss against FLOPs: Fast Forward and Adam at the ``count`` smallest lrs, tuned Adam."""
    pairs = _pairs(results)
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    for index, (lr, (adam, ff)) in enumerate(list(pairs.items())[:count]):
        color = f"C{index + 1}"
        for outcome, style, name in ((ff, "-", "Fast Forward"), (adam, ":", "Adam")):
            flops = [point[1] / 1e9 for point in outcome.curve]
            losses = [point[3] for point in outcome.curve]
            ax.plot(flops, losses, style, color=color, label=f"{name} lr {lr:g}")
    flops = [point[1] / 1e9 for point in tuned.curve]
    ax.plot(flops, [p[3] for p in tuned.curve], "-", color="black", linewidth=2,
            label=f"tuned Adam lr {tuned.run.lr:g}")  # fmt: skip
    ax.set_xlabel("training GFLOPs (FlopCounterMode, stages included)")
    ax.set_ylabel("test loss (nats/byte)")
    ax.set_title("Fast Forward at small learning rates against tuned Adam")
    ax.legend(fontsize=7)
    save_figure(fig, path)
