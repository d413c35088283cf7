"""Time training steps and validation passes of the byte-level model on CPU.

Measures, on corpus B batches: (a) a full-parameter AdamW step, (b) a LoRA r=8 step
(``query_key_value`` only, base frozen), each forward + backward + optimizer step at
``--batch-size``; (c) a no-grad forward (loss) on the 32-example tiny validation set. Reports the
median and IQR of ``--iters`` timed repetitions after ``--burn-in`` untimed ones::

    python benchmarks/bench_step_time.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness, lm, pretrain


def time_it(fn: Callable[[], object], burn_in: int, iters: int) -> tuple[float, float]:
    """Median and interquartile range of ``fn``'s wall time, in seconds."""
    for _ in range(burn_in):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return statistics.median(times), q3 - q1


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]
) -> Callable[[], None]:
    """A closure doing one forward + backward + optimizer step on the next batch."""
    counter = iter(range(10**9))

    def step() -> None:
        loss = lm.lm_loss(model, batches[next(counter) % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    """Run the three timings and write ``results/step_time-cpu-<torch>-fp32-t<threads>.csv``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--burn-in", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = lm.finetune_splits()
    batches = list(splits.train[: 8 * args.batch_size].split(args.batch_size))  # (B, T) each

    checkpoint = pretrain.ensure_checkpoint()
    full = lm.load_pretrained(checkpoint).train()
    lora = lm.add_lora(lm.load_pretrained(checkpoint)).train()
    counts = {
        "full": sum(p.numel() for p in full.parameters()),
        "lora": sum(p.numel() for p in lora.parameters() if p.requires_grad),
    }
    cases: dict[str, Callable[[], object]] = {
        "full_step": train_step(full, torch.optim.AdamW(full.parameters(), lr=1e-5), batches),
        "lora_step": train_step(
            lora,
            torch.optim.Adam([p for p in lora.parameters() if p.requires_grad], lr=4e-5),
            batches,
        ),
        "val32_forward": lambda: lm.evaluate(lora, splits.val),
    }
    made_by = harness.provenance(harness.TINY_MODEL)
    rows = []
    for name, fn in cases.items():
        median, iqr = time_it(fn, args.burn_in, args.iters)
        trainable = counts["full" if name == "full_step" else "lora"]
        rows.append(
            {
                "case": name,
                "threads": args.threads,
                "batch": args.batch_size if "step" in name else len(splits.val),
                "median_s": f"{median:.4f}",
                "iqr_s": f"{iqr:.4f}",
                "trainable_params": trainable,
                **made_by,
            }
        )
        print(
            f"{name:14s} median {median * 1e3:7.1f} ms  IQR {iqr * 1e3:6.1f} ms  "
            f"trainable {trainable:,}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"parameters: {counts['full']:,} total, {counts['lora']:,} LoRA; peak RSS {peak:.0f} MiB")
    harness.RESULTS.mkdir(exist_ok=True)
    out = harness.RESULTS / f"step_time-cpu-{torch.__version__}-fp32-t{args.threads}.csv"
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
