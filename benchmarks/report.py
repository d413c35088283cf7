"""Markdown table and loss-vs-FLOPs plot for ``bench_reproduce.py`` results."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.harness import markdown, pyplot, save_figure, saved

COLUMNS = (
    "run", "lr", "steps", "reached L*", "test loss", "L*", "GFLOPs", "FLOPs saved",
    "saved (paper 3x)", "train s", "time saved", "train CPU s", "CPU saved", "stages", "mean τ",
    "val evals", "trainable",
)  # fmt: skip


def _row(r: Any, baseline: Any, target: float) -> list[str]:
    is_ff = r.spec.fast_forward != "off"
    savings = is_ff and r.reached
    return [
        r.spec.name,
        f"{r.spec.lr:g}",
        str(r.steps),
        ("yes" if r.reached else "**no**") if is_ff else "",
        f"{r.test_loss:.4f}",
        f"{target:.4f}",
        f"{r.flops / 1e9:.1f}",
        saved(r.flops, baseline.flops) if savings else "",
        saved(r.paper_flops, baseline.paper_flops) if savings else "",
        f"{r.seconds:.1f}",
        saved(r.seconds, baseline.seconds) if savings else "",
        f"{r.cpu_seconds:.1f}" if r.cpu_seconds else "-",  # runs saved before it was measured
        saved(r.cpu_seconds, baseline.cpu_seconds) if savings else "",
        str(r.stages) if is_ff else "",
        f"{statistics.mean(r.taus):.1f}" if r.taus else "",
        str(r.evaluations) if is_ff else "",
        f"{r.trainable_params:,}",
    ]


def table(results: list[Any], targets: dict[str, float], *, tuned_group: str) -> str:
    """One row per run; savings are against the Adam run whose final loss is the row's target."""
    adam = {r.spec.group: r for r in results if r.spec.fast_forward == "off"}
    adam["tuned"] = adam[tuned_group]
    rows = [_row(r, adam[r.spec.group], targets[r.spec.group]) for r in results]
    first = results[0]
    ratio = first.val_pass_flops / first.train_step_flops
    step_vs_forward = first.train_step_flops / first.forward_flops
    return (
        f"{markdown(COLUMNS, rows)}\n\nOne validation pass (32 examples) costs {ratio:.2f} LoRA "
        f"training steps; a LoRA training step costs {step_vs_forward:.2f}x its forward pass "
        "(the paper assumes 3x).\n"
    )


def plot(results: list[Any], path: Path, group: str = "lora") -> None:
    """Test loss against cumulative FLOPs for one group of runs, like the paper's Fig. 4."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    markers = {"step": ("tab:red", "optimizer steps"), "stage": ("tab:green", "after a stage")}
    for r in (r for r in results if r.spec.group == group):
        flops = [point[0] / 1e9 for point in r.curve]
        losses = [point[1] for point in r.curve]
        if r.spec.fast_forward == "off":
            ax.plot(flops, losses, color="tab:blue", linewidth=2, label=r.spec.name)
            continue
        line = ax.plot(flops, losses, "-" if r.spec.fast_forward == "library" else ":")
        line[0].set_label(r.spec.name)
        for kind, (color, what) in markers.items():
            kinds = [point[2] for point in r.curve]
            points = [(f, y) for f, y, k in zip(flops, losses, kinds, strict=True) if k == kind]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, s=10, color=color, zorder=3, label=f"{what}: {r.spec.name}")
    ax.set_xlabel("training GFLOPs (FlopCounterMode, stages included)")
    ax.set_ylabel("test loss (nats/byte)")
    ax.set_title("LoRA finetune: test loss against compute")
    ax.legend(fontsize=6)
    save_figure(fig, path)
