"""Could a stage's payoff be predicted before it spends a validation pass? (issue 12's follow-up)

A rule that must stay within 0.1% of a tuned Adam cannot afford even one pass at a rate where
stages buy nothing (docs/results.md, "Cost-aware stages"). This scan measures two statistics of
the optimizer's own updates, free to compute, at every stage of Fast Forward with the library's
defaults (``patience=None``, so every scheduled stage runs and is recorded), on both benchmark
models, at the paper's rate and the tuned one, seeds 0 and 1:

- ``cos``: the cosine between the last two updates, ``W_n - W_{n-1}`` and ``W_{n-1} - W_{n-2}``;
- ``straightness``: ``|W_n - W_s| / sum_t |W_t - W_{t-1}|`` over the interval's steps (1 when
  every step points the same way, about ``1/sqrt(interval)`` for independent noise);

beside what the stage did: τ, validation passes and its payoff (the ``cost_aware`` ratio: the
validation loss it bought over what training bought per step since the previous landing, times
its passes in training steps, FLOPs ratio). Nothing here is in the library.

    python benchmarks/predictor_scan.py      # ~25 min on 2 cores; writes results/predictor/
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness
from fastforward import FastForward, StageRecord

OUT = harness.RESULTS / "predictor"
RATES = {"tiny": (4e-5, 3e-2), "SmolLM2": (4e-5, 2e-3)}  # the paper's, the tuned (results.md)


def model_of(model_name: str) -> str:
    """The model a run of ``RATES`` trains, as its provenance names it."""
    if model_name == "tiny":
        return harness.TINY_MODEL
    from benchmarks import bench_llm

    return bench_llm.MODEL


@dataclass
class StageRow:
    model: str
    lr: float
    seed: int
    step: int
    tau: int
    evaluations: int
    payoff: float | None
    cos: float
    straightness: float


@dataclass
class UpdateTracker:
    """Per-step updates of ``params`` from the wrapped optimizer's pre/post step hooks."""

    params: list[torch.Tensor]
    before: torch.Tensor | None = None
    updates: list[torch.Tensor] = field(default_factory=list)  # since the last stage

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).double() for p in self.params])

    def pre(self, *_: Any) -> None:
        self.before = self.flat()

    def post(self, *_: Any) -> None:
        assert self.before is not None
        self.updates.append(self.flat() - self.before)

    def statistics(self) -> tuple[float, float]:
        """``cos`` and ``straightness`` of the updates since the last stage (module docstring)."""
        last, previous = self.updates[-1], self.updates[-2]
        cos = float(last @ previous / (last.norm() * previous.norm()))
        path = sum(float(u.norm()) for u in self.updates)
        straightness = float(torch.stack(self.updates).sum(0).norm()) / path
        return cos, straightness


def scan(model_name: str, lr: float, seed: int) -> list[StageRow]:
    if model_name == "tiny":
        from benchmarks import bench_budget, lm, pretrain

        base = lm.load_pretrained(pretrain.ensure_checkpoint())
        splits = lm.finetune_splits(0, n_test=1000)
        train, val = splits.train[: bench_budget.N_TRAIN], splits.val
        model, loss_fn = harness.finetune_model(base, seed=seed), lm.lm_loss
        batch_size, epochs = bench_budget.BATCH, bench_budget.EPOCHS
        costs = harness.unit_costs(
            harness.finetune_model(base), loss_fn, train[:batch_size], val, lr
        )
    else:
        from benchmarks import bench_llm, smollm

        preset = bench_llm.PRESETS["full"]
        sizes = ("n_train", "n_test", "n_val", "context")
        data = smollm.finetune_splits(**{k: preset[k] for k in sizes})
        train, val = data["train"], data["val"]
        base = smollm.load_model()
        run = bench_llm.Run(lr, seed, "parabolic")
        model, loss_fn = bench_llm.build(run, base), smollm.lm_loss
        batch_size, epochs = preset["batch"], preset["epochs"]
        costs = harness.unit_costs(bench_llm.build(run, base), loss_fn, train[:batch_size], val, lr)
    cost_ratio = costs.val_pass / costs.train_step
    params = [p for p in model.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=lr)
    tracker = UpdateTracker(params)
    adam.register_step_pre_hook(tracker.pre)
    adam.register_step_post_hook(tracker.post)
    rows: list[StageRow] = []
    with torch.no_grad():
        reference = (0, float(loss_fn(model.eval(), val)))  # (step, validation loss)
    model.train()

    def on_stage(record: StageRecord) -> None:
        nonlocal reference
        cos, straightness = tracker.statistics()
        ref_step, ref_loss = reference
        gain_per_step = (ref_loss - record.loss_before) / (record.step - ref_step)
        stage_gain = record.loss_before - record.loss_after
        payoff = None
        if gain_per_step > 0:
            payoff = stage_gain / (gain_per_step * record.evaluations * cost_ratio)
        rows.append(StageRow(model_name, lr, seed, record.step, record.tau,
                             record.evaluations, payoff, cos, straightness))  # fmt: skip
        reference = (record.step, record.loss_after)
        tracker.updates.clear()

    ff = FastForward(  # the policy the scan measured: 0.1's default (Δ over the last step)
        adam, model, lambda: loss_fn(model, val), patience=None, on_stage=on_stage,
        delta_span="step", cost_aware=False,
    )  # fmt: skip
    for batch in harness.epoch_batches(train, batch_size, epochs, seed):
        loss_fn(model, batch).backward()
        ff.step()
        ff.zero_grad()
    return rows


def table(rows: list[StageRow]) -> str:
    body = []
    for r in rows:
        payoff = (
            "n/a" if r.payoff is None else ("inf" if math.isinf(r.payoff) else f"{r.payoff:.2f}")
        )
        cells = (r.model, f"{r.lr:g}", r.seed, r.step, r.tau, r.evaluations, payoff)
        body.append([*map(str, cells), f"{r.cos:.3f}", f"{r.straightness:.3f}"])
    header = [
        "model",
        "lr",
        "seed",
        "stage after step",
        "τ",
        "passes",
        "payoff",
        "cos",
        "straightness",
    ]
    return harness.markdown(header, body)


def main() -> None:
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "scan.json"
    # {run: {"provenance": harness.provenance(...), "stages": [StageRow as a dict, ...]}}
    done: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    for model_name, rates in RATES.items():
        for lr in rates:
            for seed in (0, 1):
                key = f"{model_name} lr={lr:g} seed={seed}"
                if key not in done:
                    made_by = harness.provenance(model_of(model_name))
                    stages = [asdict(row) for row in scan(model_name, lr, seed)]
                    done[key] = {"provenance": made_by, "stages": stages}
                    path.write_text(json.dumps(done, indent=1))
                    print(f"{key}: {len(stages)} stages", flush=True)
    rows = [StageRow(**row) for run in done.values() for row in run["stages"]]
    (OUT / "scan.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
