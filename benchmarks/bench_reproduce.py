"""Reproduce the paper at CPU scale: how much compute does Fast Forward save to reach Adam's loss?

Protocol (paper §4): a byte-level Pythia-architecture model pretrained by ``pretrain.py`` on the
GCIDE dictionary is finetuned on fortune cookies. Plain Adam trains the preset's epochs; its final
test loss is the target L*. Every other run of the same adapter starts from the same weights,
sees the same batches in the same order, and stops as soon as its test loss is <= L* + 1e-4
(checked every ``--eval-every`` optimizer steps and after every stage), or at Adam's step budget.

FLOPs are measured with ``torch.utils.flop_counter.FlopCounterMode``: one training step
(forward + backward + optimizer step, as it really is with a frozen base) and one validation
pass are counted on the run's own model; shapes are fixed, so each step and each evaluation costs
exactly that. Moving the parameters in a stage adds 2 FLOPs per trainable element per move.
Wall time and process CPU time cover training only (test evaluations excluded); on a shared
machine wall time moves with other jobs, CPU time much less.

Presets (times on a 2-core machine; losses, steps and FLOPs are identical run to run):

- ``quick`` (README's main job, 3-5 min): 1024 train examples, 5 epochs of batch 128 (40 steps);
  Adam and Fast Forward at the paper's lr 4e-5 (the paper's linear search and the library's
  default), at lr 1e-2 (the tuned rate of the full sweep) and full rank.
- ``full`` (docs/results.md, ~45 min): 4096 train examples; also DoRA, LoRA ranks 1-64, every
  search strategy, the paper's released algorithm and a 5-point learning-rate sweep.
- ``smoke`` (the CI test, seconds): 512 train examples, 3 epochs.

    python benchmarks/bench_reproduce.py --preset quick        # writes benchmarks/results/local/
    python benchmarks/bench_reproduce.py --preset full --out benchmarks/results/full  # committed
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness
from benchmarks.harness import PAPER_LR, TOLERANCE

if TYPE_CHECKING:  # imported where used: `--help` must not wait for torch and transformers
    import torch

    from benchmarks import lm

LOCAL_RESULTS = harness.RESULTS / "local"  # the default output: ignored by git
PLOTTED_GROUP = "lora"

PRESETS = {
    # n_train/n_test: examples; lr_sweep: Adam learning rates tried besides PAPER_LR; ranks: the
    # LoRA-rank sweep; searches: the strategies compared at the paper's and at the tuned lr.
    "smoke": dict(n_train=512, n_test=64, epochs=3, lr_sweep=(1e-3,), ranks=(), dora=False,
                  searches=("doubling",), paper_code=True, tuned_searches=("doubling",)),
    "quick": dict(n_train=1024, n_test=256, epochs=5, lr_sweep=(1e-2,), ranks=(), dora=False,
                  searches=("linear", "parabolic"), paper_code=False,
                  tuned_searches=("parabolic",)),
    "full": dict(n_train=4096, n_test=1000, epochs=5, lr_sweep=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                 ranks=(1, 4, 16, 64), dora=True,
                 searches=("linear", "doubling", "parabolic", "warm_start"), paper_code=True,
                 tuned_searches=("linear", "doubling", "parabolic", "warm_start")),
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """One training run. ``fast_forward``: "off", "library" or "paper"."""

    name: str
    adapter: str = "lora"  # "lora", "dora" or "full"
    rank: int = 8
    lr: float = PAPER_LR
    fast_forward: str = "off"
    search: str = "parabolic"
    # The paper has no margin; the library's default one is measured in bench_budget.py.
    min_improvement: float = 0.0
    group: str = ""  # runs of one group share the target L* of the group's Adam run


@dataclass
class Result:
    spec: Spec
    steps: int = 0
    reached: bool = False
    test_loss: float = float("nan")
    train_step_flops: int = 0
    val_pass_flops: int = 0
    forward_flops: int = 0  # one training batch, forward only: the paper's 3x accounting
    flops: int = 0
    paper_flops: int = 0
    seconds: float = 0.0  # training wall time
    cpu_seconds: float = 0.0  # training process CPU time: robust to other jobs on the machine
    stages: int = 0
    taus: list[int] = field(default_factory=list)
    stage_losses: list[tuple[float, float]] = field(default_factory=list)  # (before, after)
    stage_evaluations: list[int] = field(default_factory=list)  # validation passes per stage
    evaluations: int = 0
    trainable_params: int = 0
    curve: list[tuple[int, float, str]] = field(default_factory=list)  # (flops, loss, kind)


def train(
    spec: Spec,
    base: torch.nn.Module,
    splits: lm.Splits,
    target: float | None,
    *,
    epochs: int,
    batch_size: int = 128,
    eval_every: int = 3,
    seed: int = 0,
) -> Result:
    """Train ``spec`` from ``base`` until its test loss reaches ``target`` + ``TOLERANCE``.

    Tests every ``eval_every`` optimizer steps and after every stage; without a ``target`` (the
    group's Adam run, which sets it) trains all ``epochs`` of ``splits.train``. ``seed`` sets the
    order of the batches; the LoRA initialisation is seed 0.
    """
    import torch

    from benchmarks import lm
    from benchmarks.paper_variant import PaperFastForward
    from fastforward import FastForward

    model = harness.finetune_model(base, spec.adapter, spec.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    result = Result(spec=spec, trainable_params=sum(p.numel() for p in params))
    batches = harness.epoch_batches(splits.train, batch_size, epochs, seed)
    costs = harness.unit_costs(
        harness.finetune_model(base, spec.adapter, spec.rank),
        lm.lm_loss,
        batches[0],
        splits.val,
        spec.lr,
    )
    result.train_step_flops, result.val_pass_flops = costs.train_step, costs.val_pass
    result.forward_flops = costs.forward
    adam = torch.optim.Adam(params, lr=spec.lr)
    val_loss = lambda: lm.lm_loss(model, splits.val)  # noqa: E731
    optimizer = adam
    if spec.fast_forward == "library":
        optimizer = FastForward(
            adam,
            model,
            val_loss,
            interval=6,
            search=spec.search,
            min_improvement=spec.min_improvement,
            cost_ratio=costs.val_pass / costs.train_step,  # from FLOPs: the same on every machine
        )
    elif spec.fast_forward == "paper":
        optimizer = PaperFastForward(adam, params, val_loss, interval=6)

    def flops_so_far() -> tuple[int, int]:
        """(exact, paper's) FLOPs spent so far."""
        evaluations, moves = 0, 0
        if isinstance(optimizer, FastForward):
            evaluations = optimizer.stats.evaluations
            moves = evaluations + optimizer.stats.stages  # every evaluation moved, + landings
        elif isinstance(optimizer, PaperFastForward):
            evaluations = moves = optimizer.evaluations  # each one moved; no landing
        return (
            costs.flops(result.steps, evaluations, moves),
            costs.paper_flops(result.steps, evaluations),
        )

    def test(kind: str) -> float:
        loss = lm.evaluate(model, splits.test)
        result.curve.append((flops_so_far()[0], loss, kind))
        return loss

    test("start")
    stages_seen = 0
    for batch in batches:
        seconds, cpu_seconds = harness.timed_step(model, optimizer, lm.lm_loss, batch)
        result.seconds += seconds
        result.cpu_seconds += cpu_seconds
        result.steps += 1
        stages = _stages(optimizer)
        staged, stages_seen = stages > stages_seen, stages
        if not (staged or result.steps % eval_every == 0):
            continue
        if target is None:
            if spec.group == PLOTTED_GROUP:
                test("step")  # the Adam curve of the plot
            continue
        if test("stage" if staged else "step") <= target + TOLERANCE:
            result.reached = True
            break
    if not result.reached:
        result.test_loss = test("end")
        result.reached = target is not None and result.test_loss <= target + TOLERANCE
    result.test_loss = result.curve[-1][1]
    result.flops, result.paper_flops = flops_so_far()
    if isinstance(optimizer, FastForward):
        result.taus = [r.tau for r in optimizer.stats.history]
        result.stage_losses = [(r.loss_before, r.loss_after) for r in optimizer.stats.history]
        result.stage_evaluations = [r.evaluations for r in optimizer.stats.history]
        result.evaluations = optimizer.stats.evaluations
    elif isinstance(optimizer, PaperFastForward):
        result.taus, result.evaluations = optimizer.taus, optimizer.evaluations
        result.stage_evaluations = optimizer.stage_evaluations
    result.stages = len(result.taus)
    return result


def _stages(optimizer: object) -> int:
    from benchmarks.paper_variant import PaperFastForward
    from fastforward import FastForward

    if isinstance(optimizer, FastForward):
        return optimizer.stats.stages + optimizer.stats.skipped_stages
    if isinstance(optimizer, PaperFastForward):
        return len(optimizer.taus)
    return 0


def plan(preset: dict) -> list[Spec]:  # type: ignore[type-arg]
    """Adam first in each group (it sets the target), then its Fast Forward runs."""
    specs = [Spec("Adam LoRA r=8", group="lora")]
    specs += [
        Spec(f"FF LoRA r=8 {search}", fast_forward="library", search=search, group="lora")
        for search in preset["searches"]
    ]
    if preset["paper_code"]:
        specs += [Spec("FF (paper code) LoRA r=8", fast_forward="paper", group="lora")]
    if preset["dora"]:
        specs += [
            Spec("Adam DoRA r=8", adapter="dora", group="dora"),
            Spec("FF DoRA r=8", adapter="dora", fast_forward="library", group="dora"),
        ]
    for rank in preset["ranks"]:
        specs += [
            Spec(f"Adam LoRA r={rank}", rank=rank, group=f"rank{rank}"),
            Spec(f"FF LoRA r={rank}", rank=rank, fast_forward="library", group=f"rank{rank}"),
        ]
    specs += [
        Spec("Adam full-rank", adapter="full", group="full"),
        Spec("FF full-rank", adapter="full", fast_forward="library", group="full"),
    ]
    return specs


def main(argv: list[str] | None = None) -> list[Result]:
    parser = harness.argument_parser(__doc__, presets=PRESETS, preset="quick")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="training examples per optimizer step (default: 128)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=3,
        help="test every this many optimizer steps, and after every stage (default: 3)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="data split and batch order (default: 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results/local/<preset>, "
        "ignored by git; the committed tables are under "
        "benchmarks/results/<preset>)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep a run whose JSON in --out was made with the same spec and settings (delete "
        "a run's JSON to run it again, e.g. after a library change that alters it)",
    )
    args = parser.parse_args(argv)  # fmt: skip

    import torch

    from benchmarks import lm, pretrain, report

    preset = PRESETS[args.preset]
    out = args.out or LOCAL_RESULTS / args.preset
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    base = lm.load_pretrained(pretrain.ensure_checkpoint())
    full = lm.finetune_splits(args.seed, n_test=preset["n_test"])
    splits = replace(full, train=full.train[: preset["n_train"]])
    specs = plan(preset)
    print(
        f"[{args.preset}] {len(splits.train)} train / {len(splits.test)} test / "
        f"{len(splits.val)} val examples of {lm.CONTEXT} bytes; batch {args.batch_size}; "
        f"{preset['epochs']} epochs; {len(specs) + len(preset['lr_sweep'])} runs, then "
        f"{len(preset['tuned_searches'])} at the tuned lr",
        flush=True,
    )

    results: list[Result] = []
    targets: dict[str, float] = {}

    settings = {
        "preset": args.preset, "batch_size": args.batch_size, "seed": args.seed,
        "eval_every": args.eval_every,
    }  # fmt: skip

    def run(spec: Spec) -> Result:
        print(f"  {spec.name} ...", end="\r", flush=True)
        started = time.perf_counter()
        path = out / f"{harness.slug(spec.name).strip('-')}.json"
        saved = json.loads(path.read_text()) if args.resume and path.exists() else {}
        if saved.get("spec") == asdict(spec) and saved.get("settings") == settings:
            result = _result_from_json(saved)
            made_by = saved.get("provenance", {})
        else:
            made_by = harness.provenance(harness.TINY_MODEL)
            result = train(
                spec,
                base,
                splits,
                targets.get(spec.group),
                epochs=preset["epochs"],
                batch_size=args.batch_size,
                eval_every=args.eval_every,
                seed=args.seed,
            )
        if spec.fast_forward == "off":
            targets.setdefault(spec.group, result.test_loss)
        results.append(result)
        record = {**asdict(result), "settings": settings, "provenance": made_by}
        path.write_text(json.dumps(record, indent=1))
        print(
            f"  {spec.name:<32} lr {spec.lr:<7g} steps {result.steps:>4}"
            f"  test {result.test_loss:.4f}"
            f"  stages {result.stages:>3}  evals {result.evaluations:>4}"
            f"  ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
        return result

    for spec in specs:
        run(spec)
    sweep = [
        run(Spec(f"Adam LoRA lr={lr:g}", lr=lr, group=f"lr{lr:g}")) for lr in preset["lr_sweep"]
    ]
    paper_lr_adam = next(r for r in results if r.spec.group == "lora")
    tuned = min([paper_lr_adam, *sweep], key=lambda r: r.test_loss).spec
    targets["tuned"] = targets[tuned.group]
    for search in preset["tuned_searches"]:
        name = f"FF LoRA tuned lr={tuned.lr:g} {search}"
        run(replace(tuned, name=name, fast_forward="library", search=search, group="tuned"))

    table = report.table(results, targets, tuned_group=tuned.group)
    (out / "table.md").write_text(table)
    report.plot(results, out / "loss_vs_flops.png")
    print(table)
    print(f"wrote {out}/table.md, {out}/loss_vs_flops.png and one JSON per run")
    return results


def _result_from_json(saved: dict[str, Any]) -> Result:
    fields = {k: v for k, v in saved.items() if k not in ("settings", "provenance")}
    fields["spec"] = Spec(**fields["spec"])
    fields["stage_losses"] = [tuple(pair) for pair in fields["stage_losses"]]
    fields["curve"] = [tuple(point) for point in fields["curve"]]
    return Result(**fields)


if __name__ == "__main__":
    main()
