"""The goals set for Fast Forward's default (issue 22), read from the committed run JSONs only.

For each model and seed, the default of 0.1 (Δ over the last step, no ``cost_aware``), the
pair that 0.2 made the default (``delta_span="interval", cost_aware=True``) and the next
candidate (the pair forgiving one unpaid stage after a paid one, ``fastforward._payoff.FORGIVE``)
against Adam at the same rate:

- tuned rate: the loss at 100% of Adam's FLOPs within +0.3% of Adam's, and below it at 25%;
- paper rate (4e-5): FLOPs saved to reach Adam's final loss, at least 52% on SmolLM2 and 85%
  on the tiny model;
- every rate measured: the candidate's loss at Adam's FLOPs no worse than the default's.

    python benchmarks/goals.py   # prints the tables, writes benchmarks/results/goals.md

A cell is empty where its run is not committed yet. Losses at a budget are the last test
point within it (``anytime.loss_at``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import anytime
from benchmarks.harness import PAPER_LR, RESULTS, markdown

TUNED_WITHIN = 0.003  # the tuned-rate goal: at most +0.3% above Adam at Adam's FLOPs
PAPER_SAVING = {"tiny": 0.85, "SmolLM2 30 steps": 0.52, "SmolLM2 converged": 0.52}
POLICIES = ("default", "pair", "forgive")
CANDIDATES = ("pair", "forgive")  # judged against the goals
MISSING = "not run yet"
RATES = (1e-5, 4e-5, 1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class Setting:
    """A model and budget with its tuned rate and where its runs are."""

    model: str
    tuned: float
    folders: dict[int, Path]  # seed -> runs folder


SETTINGS = (
    Setting("tiny", 3e-2, {0: RESULTS / "budget/runs", 1: RESULTS / "budget/seed1/runs"}),
    Setting("SmolLM2 30 steps", 2e-3, {0: RESULTS / "llm/runs", 1: RESULTS / "llm/runs"}),
    Setting(
        "SmolLM2 converged",
        1e-3,
        {0: RESULTS / "llm_converged/runs", 1: RESULTS / "llm_converged/runs"},
    ),
)


def _slug(setting: Setting, seed: int, lr: float, policy: str) -> str:
    """The run's file name, as its benchmark names it (the saved ``run`` field of an old
    tiny-model run lists its options against the defaults of its day)."""
    if setting.model == "tiny":
        from benchmarks import bench_budget

        pair = bench_budget.PAIR
        return {
            "adam": bench_budget.Run(lr),
            "default": bench_budget.ff(lr, ""),
            "pair": bench_budget.ff(lr, "", pace="peak", **pair),
            "forgive": bench_budget.ff(lr, "", pace="peak", forgive=True, **pair),
        }[policy].slug
    from benchmarks import bench_llm

    return {
        "adam": bench_llm.Run(lr, seed),
        "default": bench_llm.Run(lr, seed, "parabolic"),
        "pair": bench_llm.Run(lr, seed, **bench_llm.DEFAULT_0_2),
        "forgive": bench_llm.Run(lr, seed, forgive=True, **bench_llm.DEFAULT_0_2),
    }[policy].slug


def _curve(saved: dict[str, Any]) -> list[tuple[int, float, str]]:
    if "options" in saved["run"]:  # bench_budget: (step, FLOPs, seconds, loss)
        return [(flops, loss, "") for _, flops, _, loss in saved["curve"]]
    return [(flops, loss, kind) for flops, loss, kind in saved["curve"]]


def _saved(setting: Setting) -> dict[tuple[int, float, str], dict[str, Any]]:
    """``setting``'s committed run JSONs by (seed, lr, policy)."""
    runs = {}
    for seed, folder in setting.folders.items():
        for lr in RATES:
            for policy in ("adam", *POLICIES):
                path = folder / f"{_slug(setting, seed, lr, policy)}.json"
                if path.exists():
                    runs[(seed, lr, policy)] = json.loads(path.read_text())
    return runs


def load(setting: Setting) -> dict[tuple[int, float, str], list[tuple[int, float, str]]]:
    """The curves of ``setting``'s committed runs by (seed, lr, policy)."""
    return {key: _curve(saved) for key, saved in _saved(setting).items()}


def versions() -> str:
    """Which library versions made the runs the table reads, per policy (from provenance)."""
    made: dict[str, set[str]] = {}
    for setting in SETTINGS:
        for (_, _, policy), saved in _saved(setting).items():
            version = (  # bench_llm's runs before provenance kept it in their config
                saved.get("provenance", {}).get("fastforward")
                or saved.get("config", {}).get("fastforward")
                or "unrecorded"
            )
            made.setdefault(policy, set()).add(version)
    return "; ".join(f"{policy}: {', '.join(sorted(made[policy]))}" for policy in sorted(made))


def versus_adam(curve: Any, adam: Any, fraction: float) -> float:
    """The run's loss at ``fraction`` of Adam's FLOPs, relative to Adam's there."""
    budget = fraction * adam[-1][0]
    return anytime.loss_at(curve, budget) / anytime.loss_at(adam, budget) - 1


def saving(curve: Any, adam: Any) -> float | None:
    """FLOPs saved to reach Adam's final loss (None: never within Adam's budget)."""
    target = adam[-1][1]
    mine, theirs = anytime.flops_to_reach(curve, target), anytime.flops_to_reach(adam, target)
    return None if mine is None or not theirs else 1 - mine / theirs


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "never"
    return f"{value:+.2%}" if signed else f"{value:.0%}"


def goals_table() -> str:
    """One row per goal, model and seed: the default's figure, the pair's, met or not."""
    rows = []
    for setting in SETTINGS:
        curves = load(setting)
        for seed in setting.folders:
            mine = {(lr, p): c for (s, lr, p), c in curves.items() if s == seed}
            cell = lambda lr, policy: mine.get((lr, policy))  # noqa: E731, B023
            adam = cell(setting.tuned, "adam")
            tuned = {p: cell(setting.tuned, p) for p in POLICIES}
            for goal, fraction, test in (
                (f"tuned {setting.tuned:g}: @100% ≤ +0.3%", 1.0, lambda v: v <= TUNED_WITHIN),
                (f"tuned {setting.tuned:g}: ahead @25%", 0.25, lambda v: v < 0),
            ):
                if adam is None:
                    continue
                figures = {
                    p: MISSING if c is None else versus_adam(c, adam, fraction)
                    for p, c in tuned.items()
                }
                rows.append(_goal_row(goal, setting, seed, figures, test, signed=True))
            adam = cell(PAPER_LR, "adam")
            if adam is not None:
                goal = f"paper 4e-5: FLOPs saved ≥ {PAPER_SAVING[setting.model]:.0%}"
                figures = {
                    p: MISSING if (c := cell(PAPER_LR, p)) is None else saving(c, adam)
                    for p in POLICIES
                }
                least = round(100 * PAPER_SAVING[setting.model])  # as the issue rounds it
                rows.append(
                    _goal_row(goal, setting, seed, figures, lambda v, n=least: round(100 * v) >= n)
                )
            rows.append(_no_worse_row(setting, seed, curves))
    header = ("goal", "model", "seed", "0.1 default", "0.2 default (the pair)", "met by 0.2",
              "0.2 + forgive (candidate)", "met by it")  # fmt: skip
    return markdown(header, [row for row in rows if row is not None])


def _goal_row(
    goal: str,
    setting: Setting,
    seed: int,
    figures: dict[str, Any],
    test: Any,
    signed: bool = False,
) -> list[str] | None:
    """``figures``: per policy, a fraction, None (never reached) or ``MISSING``."""
    if all(figure is MISSING for figure in figures.values()):
        return None
    shown = {p: f if f is MISSING else _pct(f, signed) for p, f in figures.items()}
    row = [goal, setting.model, str(seed), shown["default"]]
    for candidate in CANDIDATES:
        figure = figures[candidate]
        met = "" if figure is MISSING else ("yes" if figure is not None and test(figure) else "no")
        row += [shown[candidate], met]
    return row


def _no_worse_row(setting: Setting, seed: int, curves: dict[Any, Any]) -> list[str] | None:
    """Every rate with Adam, the default and a candidate: the candidate's @100% against the
    default's, per candidate (the rates it was run at, where they are not the pair's)."""
    verdicts, rates_of = [], {}
    for candidate in CANDIDATES:
        worse, rates = [], []
        for (run_seed, lr, policy), adam in sorted(curves.items()):
            if run_seed != seed or policy != "adam":
                continue
            default, mine = curves.get((seed, lr, "default")), curves.get((seed, lr, candidate))
            if default is None or mine is None:
                continue
            rates.append(f"{lr:g}")
            gap = versus_adam(mine, adam, 1.0) - versus_adam(default, adam, 1.0)
            if round(gap, 4) > 0:  # worse by at least 0.01% of Adam's loss
                worse.append(f"{lr:g} ({gap:+.2%} of Adam's loss)")
        rates_of[candidate] = rates
        verdict = ("yes" if not worse else "no: " + "; ".join(worse)) if rates else ""
        if rates and candidate != "pair" and rates != rates_of["pair"]:
            verdict += f" (rates {', '.join(rates)})"
        verdicts += ["", verdict]
    if not rates_of["pair"]:
        return None
    goal = "no rate worse than the default @100%"
    return [goal, setting.model, str(seed), f"rates {', '.join(rates_of['pair'])}", *verdicts]


def main() -> None:
    text = goals_table()
    (RESULTS / "goals.md").write_text(
        "Generated by `python benchmarks/goals.py` from the committed run JSONs.\n\n"
        + text.rstrip("\n")
        + f"\n\nLibrary versions of the runs read, by policy: {versions()}.\n"
    )
    print(text)


if __name__ == "__main__":
    main()
