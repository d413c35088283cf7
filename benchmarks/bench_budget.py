"""Same budget for everyone: every run trains all epochs, then we compare where each one ends.

``bench_reproduce.py`` stops a run as soon as it reaches Adam's loss (the paper's question: how
much compute to get there?). Here every run trains the full budget, so we can also ask whether
Fast Forward ever *ends* worse than Adam, and how it behaves away from the paper's learning rate.
The studies share the same model, data and measurements:

- ``search`` (docs/results.md, "Same budget: search strategies and guards"): the search
  strategies and the guards against overfitting the 32-example validation set, at the paper's
  and the tuned lr.
- ``lr`` (docs/results.md, "Learning-rate sweep"): plain Adam and Fast Forward with the
  library's defaults at every learning rate of a 10000x sweep.
- ``policy``, ``lasting``, ``warmup`` (docs/results.md): the stage policies, whether their
  leads last, and stages during a learning-rate warmup.
- ``peers`` (docs/results.md, "Peers"): LoRA+ (peft's ``create_loraplus_optimizer``) and
  rsLoRA, each at its own tuned rate, a tenth of it and the paper's, alone and wrapped.

The tuned lr is the one whose Adam run ends with the lowest test loss. Test loss is measured
every ``TEST_EVERY`` steps (right after the stages, which run every 6) on ``N_TEST`` held-out
examples; FLOPs are measured per unit with ``FlopCounterMode`` (``harness.unit_costs``).
Each run is one JSON under ``results/budget/runs/``, named by its learning rate and its options
that differ from the library's defaults; a run whose JSON exists is not run again, so the tables
can be rebuilt alone. After changing the library, pass ``--fresh`` (deletes them first).

    python benchmarks/bench_budget.py             # both studies, ~85 min on 2 cores
    python benchmarks/bench_budget.py --study lr  # one of them
    python benchmarks/bench_budget.py --study lr --seed 1  # another data order and LoRA init,
                                                           # in results/budget/seed1/, ~50 min
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import budget_report, harness
from benchmarks.harness import PAPER_LR
from fastforward import FastForward, _payoff, validation_closure

if TYPE_CHECKING:
    from benchmarks import lm

OUT = harness.RESULTS / "budget"
N_TRAIN, N_TEST, EPOCHS, BATCH = 2048, 250, 5, 128
TEST_EVERY = 6
VAL_POOL = 4  # rotation: stages cycle through 4 disjoint groups of 32 held-out examples
LR_SWEEP = (1e-5, 4e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class Run:
    """One full-budget run. ``options``: FastForward keyword arguments; None means plain Adam."""

    lr: float
    options: tuple[tuple[str, Any], ...] | None = None
    rotate: bool = False  # judge stage k on group k mod VAL_POOL of the held-out pool
    label: str = ""
    pace: str = ""  # cost_aware's training pace (fastforward._payoff.PACE); "": the library's
    schedule: str = ""  # "linear" or "cosine", each after WARMUP_STEPS of linear warmup; "": none
    adapter: str = "lora"  # or "rslora": LoRA scaled by alpha/sqrt(r)
    loraplus_ratio: float = 0.0  # LoRA+ (peft's create_loraplus_optimizer): B at this x lr
    forgive: bool = False  # cost_aware forgives an unpaid stage after a paid one (_payoff.FORGIVE)

    @property
    def is_ff(self) -> bool:
        return self.options is not None

    @property
    def slug(self) -> str:
        baseline = [f"schedule={self.schedule}"] if self.schedule else []
        baseline += [self.adapter] if self.adapter != "lora" else []
        baseline += [f"loraplus{self.loraplus_ratio:g}"] if self.loraplus_ratio else []
        if not self.is_ff:
            return f"adam-lr{self.lr:g}" + "".join(f"-{p}" for p in baseline)
        parts = [f"{k}={_plain(v)}" for k, v in self.options or ()]
        parts += ["rotate"] if self.rotate else []
        parts += [f"pace={self.pace}"] if self.pace else []
        parts += ["forgive"] if self.forgive else []
        return f"ff-lr{self.lr:g}" + "".join(f"-{p}" for p in parts + baseline)

    @property
    def is_peer(self) -> bool:
        return self.adapter != "lora" or bool(self.loraplus_ratio)


def _plain(value: Any) -> str:
    """An option's value for a file name: tuples as ``2-24``."""
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


# The policy of a run whose options leave these out: the defaults of fastforward 0.1, so that a
# run's file name keeps its meaning when the library's defaults change (0.2: the pair).
BASELINE = {"delta_span": "step", "cost_aware": False}


def ff(
    lr: float,
    label: str,
    rotate: bool = False,
    pace: str = "",
    schedule: str = "",
    adapter: str = "lora",
    loraplus_ratio: float = 0.0,
    forgive: bool = False,
    **options: Any,
) -> Run:
    """A Fast Forward run; options equal to the baseline's are dropped (same slug): the library's
    defaults, with ``BASELINE`` for the policy."""
    defaults = {k: p.default for k, p in inspect.signature(FastForward).parameters.items()}
    baseline = {**defaults, **BASELINE}
    options = {k: v for k, v in options.items() if v != baseline[k]}
    options_ = tuple(sorted(options.items()))
    return Run(lr, options_, rotate, label, pace, schedule, adapter, loraplus_ratio, forgive)


@dataclass
class Outcome:
    run: Run
    final_loss: float = float("nan")
    best_loss: float = float("nan")
    flops: int = 0
    seconds: float = 0.0
    stage_seconds: float = 0.0
    stages: int = 0
    taus: list[int] = field(default_factory=list)
    stage_evaluations: list[int] = field(default_factory=list)  # validation passes per stage
    evaluations: int = 0
    gave_up_at_step: int | None = None
    gave_up_because: str | None = None
    intervals: list[int] = field(default_factory=list)  # steps between consecutive stages
    train_step_flops: int = 0
    val_pass_flops: int = 0
    curve: list[tuple[int, int, float, float]] = field(default_factory=list)  # step, FLOPs, s, loss
    provenance: dict[str, str] = field(default_factory=dict)  # empty in runs saved before it
    stage_losses: list[tuple[float, float]] = field(default_factory=list)  # L_0, landing
    payoffs: list[float | None] = field(default_factory=list)  # cost_aware's, per stage


def train(
    run: Run,
    base: torch.nn.Module,
    splits: lm.Splits,
    pool: torch.Tensor,
    seed: int = 0,
    *,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    test_every: int = TEST_EVERY,
) -> Outcome:
    """Train ``epochs`` epochs of LoRA r=8 at ``run.lr``; test every ``test_every`` steps.

    ``seed`` sets the order of the training examples and the LoRA initialisation; the data
    splits are the same for every seed. ``pool`` holds the validation groups of a rotating run
    (``splits.val`` first).
    """
    from benchmarks import lm

    model = harness.finetune_model(base, adapter=run.adapter, seed=seed)
    batches = harness.epoch_batches(splits.train, batch_size, epochs, seed)
    outcome = Outcome(run, provenance=harness.provenance(harness.TINY_MODEL))
    costs = harness.unit_costs(
        harness.finetune_model(base), lm.lm_loss, batches[0], splits.val, run.lr
    )
    outcome.train_step_flops, outcome.val_pass_flops = costs.train_step, costs.val_pass
    adam = harness.base_optimizer(model, run.lr, run.loraplus_ratio)
    optimizer: torch.optim.Optimizer = adam
    if run.options is not None:
        groups = pool.split(len(splits.val)) if run.rotate else [splits.val]
        closure = validation_closure(model, groups, lm.lm_loss, rotate=1)
        options = {**BASELINE, **dict(run.options)}
        if options.get("cost_ratio") == "flops":  # a validation pass's cost in training steps
            options["cost_ratio"] = outcome.val_pass_flops / outcome.train_step_flops
        optimizer = FastForward(adam, model, closure, **options)
    scheduler = harness.warmup_schedule(run.schedule, optimizer, WARMUP_STEPS, len(batches))
    switches = (_payoff.PACE, _payoff.FORGIVE)
    _payoff.PACE, _payoff.FORGIVE = run.pace or _payoff.PACE, run.forgive
    try:
        _train_loop(outcome, model, optimizer, scheduler, costs, batches, splits, test_every)
    finally:
        _payoff.PACE, _payoff.FORGIVE = switches
    return outcome


def _train_loop(
    outcome: Outcome,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    costs: harness.Costs,
    batches: list[Any],
    splits: lm.Splits,
    test_every: int,
) -> None:
    from benchmarks import lm

    def flops(steps: int) -> int:
        if not isinstance(optimizer, FastForward):
            return costs.flops(steps)
        stats = optimizer.stats
        moves = stats.evaluations + stats.stages  # every evaluation moved, + each landing
        return costs.flops(steps, stats.evaluations, moves)

    def test(step: int) -> None:
        loss = lm.evaluate(model, splits.test)
        outcome.curve.append((step, flops(step), outcome.seconds, loss))

    test(0)
    for step, batch in enumerate(batches, start=1):
        outcome.seconds += harness.timed_step(model, optimizer, lm.lm_loss, batch)[0]
        if scheduler is not None:
            scheduler.step()
        if step % test_every == 0 or step == len(batches):
            test(step)
    outcome.final_loss = outcome.curve[-1][3]
    outcome.best_loss = min(point[3] for point in outcome.curve)
    outcome.flops = outcome.curve[-1][1]
    if isinstance(optimizer, FastForward):
        stats = optimizer.stats
        outcome.stages, outcome.evaluations = stats.stages, stats.evaluations
        outcome.taus = [record.tau for record in stats.history]
        outcome.stage_evaluations = [record.evaluations for record in stats.history]
        outcome.stage_losses = [(r.loss_before, r.loss_after) for r in stats.history]
        outcome.payoffs = [record.payoff for record in stats.history]
        outcome.stage_seconds = stats.stage_seconds
        outcome.gave_up_at_step = stats.gave_up_at_step
        outcome.gave_up_because = stats.gave_up_because
        steps = [0] + [record.step for record in stats.history]
        outcome.intervals = [b - a for a, b in itertools.pairwise(steps)]


def search_study(tuned_lr: float) -> list[Run]:
    """Strategies and single guards (from no guard at all) at the paper's lr and the tuned one."""
    runs = []
    for lr in (PAPER_LR, tuned_lr):
        bare = dict(min_improvement=0.0)  # no guard: the library's default has one
        runs += [
            Run(lr, label="Adam"),
            ff(lr, "linear (paper)", search="linear", **bare),
            ff(lr, "doubling", search="doubling", **bare),
            ff(lr, "parabolic", search="parabolic", **bare),
            ff(lr, "warm_start", search="warm_start", **bare),
            ff(lr, "parabolic + min_improvement 1e-3 (default)", search="parabolic",
               min_improvement=1e-3),
            ff(lr, "parabolic + rotating val set", rotate=True, search="parabolic", **bare),
            ff(lr, "parabolic + max_tau 4x interval", search="parabolic", max_tau_ratio=4.0,
               **bare),
            ff(lr, "parabolic + adaptive interval 2..24", search="parabolic",
               adaptive_interval=(2, 24), **bare),
        ]  # fmt: skip
    return runs


def policy_study(tuned_lr: float) -> list[Run]:
    """Fast Forward with and without the cost-aware rule, each with Δ over the last step (the
    default) and over the interval, at the paper's lr and the tuned one.

    The rule's cost ratio is the measured FLOPs of a validation pass over a training step, so
    the runs are deterministic (a user with a busy GPU can pass the same).
    """
    runs = []
    for lr in (PAPER_LR, tuned_lr):
        runs += [
            Run(lr, label="Adam"),
            ff(lr, "FF defaults"),
            ff(lr, "FF cost-aware", cost_aware=True, cost_ratio="flops"),
            ff(lr, "FF interval delta", delta_span="interval"),
            ff(lr, "FF interval delta cost-aware", delta_span="interval", cost_aware=True,
               cost_ratio="flops"),
        ]  # fmt: skip
    return runs


# 0.2's default, its cost ratio from FLOPs (a run's file name keeps the options against BASELINE)
PAIR = dict(delta_span="interval", cost_aware=True, cost_ratio="flops")
LASTING_LRS = (3e-3, 1e-2)  # below the tuned lr: where the defaults' lead did not last


def lasting_study(tuned_lr: float) -> list[Run]:
    """Whether a lead lasts (issue 22): the defaults and the opt-in pair, whose ``cost_aware``
    judges a stage against the last interval's training pace or the fastest one so far (and,
    with the fastest, forgives or not an unpaid stage after a paid one), at the paper's lr, the
    tuned one and the two between where the defaults ended behind Adam."""
    runs = []
    for lr in (PAPER_LR, *LASTING_LRS, tuned_lr):
        runs += [
            Run(lr, label="Adam"),
            ff(lr, "FF 0.1 defaults (step Δ)"),
            ff(lr, "FF interval+cost-aware, last pace", pace="last", **PAIR),
            ff(lr, "FF interval+cost-aware, peak pace", pace="peak", **PAIR),
            ff(lr, "FF 0.2 + forgive one unpaid stage", pace="peak", forgive=True, **PAIR),
        ]
    return runs


WARMUP_STEPS = 8  # a tenth of the 80 steps, as common recipes (warmup_ratio 0.03..0.1)


def warmup_study(tuned_lr: float) -> list[Run]:
    """Stages during the learning-rate warmup (issue 25): Adam, Fast Forward from the first
    interval (its first stage after step 6, inside the warmup) and Fast Forward waiting for the
    warmup to end (``warmup=WARMUP_STEPS``), under a linear and a cosine schedule, at the
    paper's lr and the tuned one. Fast Forward with Δ over the interval and ``cost_aware``
    (its cost ratio from FLOPs), the default candidate of issue 22."""
    runs = []
    for lr in (PAPER_LR, tuned_lr):
        for schedule in ("linear", "cosine"):
            runs += [
                Run(lr, label="Adam", schedule=schedule),
                ff(lr, "FF", schedule=schedule, **PAIR),
                ff(lr, f"FF warmup={WARMUP_STEPS}", schedule=schedule, warmup=WARMUP_STEPS, **PAIR),
            ]
    return runs


LORAPLUS_RATIOS = (16.0, 4.0)  # peft's docs' and the LoRA+ paper's 16, and a milder one


class NotRunYet(LookupError):
    """A run whose JSON is missing, asked for with ``--tables-only``."""


def bracketed(get: Any, start: float, **baseline: Any) -> float:
    """The rate of ``LR_SWEEP`` with the lowest final loss of the runs ``Run(lr, **baseline)``,
    walked from ``start`` until both neighbours on the grid are worse (or the grid ends)."""

    def final(index: int) -> float:  # a diverged run (NaN), or one not run yet, is the worst
        try:
            loss = get(Run(LR_SWEEP[index], label="alone", **baseline)).final_loss
        except NotRunYet:
            return math.inf
        return loss if loss == loss else math.inf

    best = LR_SWEEP.index(start)
    while True:
        neighbours = [i for i in (best - 1, best + 1) if 0 <= i < len(LR_SWEEP)]
        challenger = min(neighbours, key=final)
        if final(challenger) >= final(best):
            return LR_SWEEP[best]
        best = challenger


def peer_study(get: Any, tuned_lr: float) -> list[Run]:
    """What users pick instead (issue 24): LoRA+ at two ratios and rsLoRA, each at its own
    bracketed rate alone and wrapped by 0.2's default, two grid steps below it (a tenth, from
    3e-4 up) and at the paper's rate; tuned Adam alone and wrapped for reference. Then, where the
    first stage decides everything, 0.1's default (Δ over the last step, no cost rule) on
    LoRA+ (ratio 16) at its tuned rate and a tenth of it."""
    runs = [Run(tuned_lr, label="Adam"), ff(tuned_lr, "FF", **PAIR)]
    baselines = [{"loraplus_ratio": r} for r in LORAPLUS_RATIOS] + [{"adapter": "rslora"}]
    tenths = []
    for baseline in baselines:
        tuned = bracketed(get, tuned_lr, **baseline)
        tenth = LR_SWEEP[max(LR_SWEEP.index(tuned) - 2, 0)]
        tenths.append((tuned, tenth))
        for lr in dict.fromkeys((tuned, tenth, PAPER_LR)):
            runs += [Run(lr, label="alone", **baseline), ff(lr, "FF", **baseline, **PAIR)]
    plus = {"loraplus_ratio": LORAPLUS_RATIOS[0]}
    runs += [ff(lr, "FF 0.1 (step Δ)", **plus) for lr in tenths[0]]
    return runs


def lr_study() -> list[Run]:
    """Plain Adam and Fast Forward with the library's defaults at every lr of the sweep."""
    return [run for lr in LR_SWEEP for run in (Run(lr, label="Adam"), ff(lr, "FF defaults"))]


def main(argv: list[str] | None = None) -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument(
        "--study",
        choices=("all", "lr", "search", "policy", "lasting", "warmup", "peers"),
        default="all",
        help="lr: the learning-rate sweep; search: strategies and guards; policy: the "
        "cost-aware rule and Δ over the interval; lasting: the training pace the cost-aware "
        "rule judges against; warmup: stages during a warmup schedule; peers: LoRA+ and rsLoRA, "
        "alone and wrapped (default: all; ~2 min a run on 2 cores)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs first")
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="train nothing: write the tables of the runs already saved, leaving out the others",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="data order and LoRA init; not 0: under seed<N>/"
    )
    args = parser.parse_args(argv)
    from benchmarks import lm, pretrain  # transformers: imported once the arguments are parsed

    torch.set_num_threads(args.threads)
    out = OUT if args.seed == 0 else OUT / f"seed{args.seed}"
    runs_dir = out / "runs"
    if args.fresh and runs_dir.exists():
        shutil.rmtree(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)

    base = lm.load_pretrained(pretrain.ensure_checkpoint())
    full = lm.finetune_splits(0, n_test=1000)
    pool = full.train[N_TRAIN : N_TRAIN + (VAL_POOL - 1) * len(full.val)]
    splits = replace(full, train=full.train[:N_TRAIN], test=full.test[:N_TEST])
    pool = torch.cat([splits.val, pool])  # group 0 is the usual validation set

    outcomes: dict[str, Outcome] = {}

    def get(run: Run) -> Outcome:
        path = runs_dir / f"{run.slug}.json"
        if run.slug not in outcomes:
            if path.exists():
                outcomes[run.slug] = _load(path)
            elif args.tables_only:
                raise NotRunYet(run.slug)
            else:
                started = time.perf_counter()
                outcome = train(run, base, splits, pool, args.seed)
                path.write_text(json.dumps(asdict(outcome), indent=1))
                outcomes[run.slug] = outcome
                print(
                    f"  {run.slug:<60} final {outcome.final_loss:.4f} best "
                    f"{outcome.best_loss:.4f} stages {outcome.stages:>3} evals "
                    f"{outcome.evaluations:>4} ({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        return replace(outcomes[run.slug], run=run)

    def done(runs: list[Run]) -> list[Outcome]:
        """The runs' outcomes, trained if missing (with ``--tables-only``: left out)."""
        outcomes = []
        for run in runs:
            try:
                outcomes.append(get(run))
            except NotRunYet:
                print(f"  not run yet: {run.slug}")
        return outcomes

    adam = [get(Run(lr, label="Adam")) for lr in LR_SWEEP]
    tuned = min(adam, key=lambda o: o.final_loss)
    print(f"tuned lr {tuned.run.lr:g}: Adam final test loss {tuned.final_loss:.4f}", flush=True)
    if args.study in ("all", "lr"):
        results = done(lr_study())
        budget_report.write_lr_study(results, tuned, out)
        if args.seed != 0:
            _compare_with_seed_0(args.seed, results, tuned, out)
    if args.study in ("all", "search"):
        results = done(search_study(tuned.run.lr))
        budget_report.write_search_study(results, tuned, out)
    if args.study in ("all", "policy"):
        results = done(policy_study(tuned.run.lr))
        budget_report.write_policy_study(results, out)
    if args.study in ("all", "lasting"):
        results = done(lasting_study(tuned.run.lr))
        budget_report.write_lasting_study(results, out)
    if args.study in ("all", "warmup"):
        results = done(warmup_study(tuned.run.lr))
        budget_report.write_warmup_study(results, out)
    if args.study in ("all", "peers"):
        results = done(peer_study(get, tuned.run.lr))
        budget_report.write_peer_study(results, out)


def _compare_with_seed_0(seed: int, results: list[Outcome], tuned: Outcome, out: Path) -> None:
    """``seed_comparison.md`` next to this seed's tables, if seed 0's runs are all there."""
    paths = [OUT / "runs" / f"{run.slug}.json" for run in lr_study()]
    if not all(path.exists() for path in paths):
        print("seed 0's learning-rate sweep is incomplete: no seed comparison written")
        return
    seed_0 = [replace(_load(path), run=run) for path, run in zip(paths, lr_study(), strict=True)]
    tuned_0 = min((o for o in seed_0 if not o.run.is_ff), key=lambda o: o.final_loss)
    table = budget_report.seed_table({0: (seed_0, tuned_0), seed: (results, tuned)})
    (out / "seed_comparison.md").write_text(table + "\n")
    print(table)


def _load(path: Path) -> Outcome:
    data = json.loads(path.read_text())
    data["run"] = Run(**{**data["run"], "options": _options(data["run"]["options"])})
    data["curve"] = [tuple(point) for point in data["curve"]]
    data["stage_losses"] = [tuple(pair) for pair in data.get("stage_losses", [])]
    return Outcome(**data)


def _options(options: list[list[Any]] | None) -> tuple[tuple[str, Any], ...] | None:
    if options is None:
        return None
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in options)


if __name__ == "__main__":
    main()
