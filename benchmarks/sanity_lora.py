"""Sanity check: a short LoRA finetune of the pretrained model on corpus B lowers the test loss.

Adam on LoRA r=8 (``query_key_value``), batch 64, one pass over shuffled train examples; prints
the test and tiny-validation losses in nats/byte every ``--eval-every`` steps::

    python benchmarks/sanity_lora.py --steps 100 --lr 4e-5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import lm


def main() -> None:
    """Finetune and print the loss curve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    splits = lm.finetune_splits(args.seed)
    model = lm.add_lora(lm.load_pretrained(), seed=args.seed).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            print(
                f"step {step:4d}  test {lm.evaluate(model, splits.test):.4f}  "
                f"val32 {lm.evaluate(model, splits.val):.4f}  "
                f"{time.perf_counter() - start:5.0f} s",
                flush=True,
            )
        if step == args.steps:
            break
        rows = order[step * args.batch_size : (step + 1) * args.batch_size]
        loss = lm.lm_loss(model, splits.train[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
