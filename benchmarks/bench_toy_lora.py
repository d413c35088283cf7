"""Toy LoRA finetune, plain Adam against Fast Forward, side by side in one process.

A frozen "pretrained" MLP is LoRA-finetuned (through PEFT) towards a related teacher network.
Plain Adam trains for ``--epochs`` epochs; its final test loss is the target. Fast Forward then
trains from the same start, with the same batches, until its test loss is within 1e-4 of the
target. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (training steps and every
validation pass of the stages; test evaluations are bookkeeping and not counted); wall time is
measured in a second, uninstrumented pass, min and median over ``--repeats``.

    python benchmarks/bench_toy_lora.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastforward import FastForward

TOLERANCE = 1e-4  # the paper's ε: "within 1e-4 of the target loss"


@dataclass
class Task:
    base: torch.nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]  # the 32-example tiny validation set
    test: tuple[torch.Tensor, torch.Tensor]


@dataclass
class Run:
    steps: int
    flops: int
    test_loss: float
    stages: int = 0
    taus: tuple[int, ...] = ()
    evaluations: int = 0


def make_task(seed: int, n_train: int) -> Task:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def mlp() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
            torch.nn.Tanh(), torch.nn.Linear(128, 8),
        )  # fmt: skip

    base, teacher = mlp(), mlp()
    with torch.no_grad():
        for b, t in zip(base.parameters(), teacher.parameters(), strict=True):
            t.copy_(b + 0.3 * torch.randn(b.shape, generator=generator))
        x = torch.randn(n_train + 32 + 1024, 32, generator=generator)
        y = teacher(x)
    split = (n_train, n_train + 32)
    return Task(
        base,
        (x[: split[0]], y[: split[0]]),
        (x[split[0] : split[1]], y[split[0] : split[1]]),
        (x[split[1] :], y[split[1] :]),
    )


def mse(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(data[0]), data[1])


def train(
    task: Task,
    args: argparse.Namespace,
    *,
    fast_forward: bool,
    target: float | None = None,
    count_flops: bool = True,
) -> Run:
    """Train until the step budget (``target=None``) or until test loss <= target + ε."""
    torch.manual_seed(args.seed + 1)
    config = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["0", "2", "4"])
    model = peft.get_peft_model(copy.deepcopy(task.base), config)
    adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    optimizer = FastForward(adam, model, lambda: mse(model, task.val)) if fast_forward else adam
    counter = FlopCounterMode(display=False)
    flops = 0
    batches = torch.Generator().manual_seed(args.seed + 2)
    steps_per_epoch = len(task.train[0]) // args.batch_size
    test_loss = float("nan")
    step = 0
    while step < args.epochs * steps_per_epoch:
        step += 1
        index = torch.randint(0, len(task.train[0]), (args.batch_size,), generator=batches)
        with counter if count_flops else contextlib.nullcontext():
            mse(model, (task.train[0][index], task.train[1][index])).backward()
            optimizer.step()
            optimizer.zero_grad()
        flops += counter.get_total_flops() if count_flops else 0  # __enter__ resets the count
        if target is not None:
            with torch.no_grad():
                test_loss = mse(model, task.test).item()
            if test_loss <= target + TOLERANCE:
                break
    with torch.no_grad():
        test_loss = mse(model, task.test).item()
    run = Run(steps=step, flops=flops, test_loss=test_loss)
    if isinstance(optimizer, FastForward):
        run.stages = optimizer.stats.stages
        run.taus = tuple(r.tau for r in optimizer.stats.history)
        run.evaluations = optimizer.stats.evaluations
    return run


def seconds(task: Task, args: argparse.Namespace, **kwargs: object) -> list[float]:
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        train(task, args, count_flops=False, **kwargs)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = make_task(args.seed, args.train_size)
    adam = train(task, args, fast_forward=False)
    ff = train(task, args, fast_forward=True, target=adam.test_loss)
    adam_seconds = seconds(task, args, fast_forward=False)
    ff_seconds = seconds(task, args, fast_forward=True, target=adam.test_loss)
    reached = ff.test_loss <= adam.test_loss + TOLERANCE

    print(f"toy LoRA (r={args.rank}), Adam lr={args.lr}, batch {args.batch_size} vs 32 val")
    print(f"{'run':<14}{'steps':>7}{'GFLOPs':>10}{'test loss':>12}{'time min/med (s)':>20}")
    for name, run, times in (("Adam", adam, adam_seconds), ("Fast Forward", ff, ff_seconds)):
        print(
            f"{name:<14}{run.steps:>7}{run.flops / 1e9:>10.2f}{run.test_loss:>12.5f}"
            f"{min(times):>10.2f} /{statistics.median(times):>6.2f}"
        )
    print(f"stages {ff.stages}, accepted tau {list(ff.taus)}, val evaluations {ff.evaluations}")
    if not reached:
        print("Fast Forward did NOT reach Adam's final test loss within the step budget")
        return
    flops_saved = 1 - ff.flops / adam.flops
    time_saved = 1 - statistics.median(ff_seconds) / statistics.median(adam_seconds)
    print(f"Fast Forward saved {flops_saved:.0%} of FLOPs and {time_saved:.0%} of wall time")


if __name__ == "__main__":
    main()
