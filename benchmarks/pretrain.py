"""Pretrain the byte-level Pythia model of ``benchmarks/lm.py`` from scratch on corpus A.

AdamW with linear warmup and cosine decay, on random 128-byte windows of the GCIDE stream.
Deterministic: the same arguments, thread count and torch build give bitwise the same
checkpoint. The defaults (1000 steps of 64 x 128 bytes, about one epoch of corpus A) take
~13 min on one CPU thread::

    python benchmarks/pretrain.py  # writes benchmarks/checkpoints/pythia-bytes-*.safetensors

The checkpoint is fp32 safetensors; its metadata holds the config (``config``) and the
arguments and losses of the run (``pretrain``). The benchmark scripts call
``ensure_checkpoint()``, which runs this pretraining only if the checkpoint is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import save_file

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import lm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=lm.CONTEXT)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=6e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=60, help="linear warmup steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint path (default: lm.checkpoint_path(config))",
    )
    return parser.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup to ``args.lr``, then cosine decay to ``args.lr / 10`` at the last step."""
    peak, warmup = float(args.lr), int(args.warmup)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_both(
    model: torch.nn.Module, held_out_a: torch.Tensor, test_b: torch.Tensor
) -> dict[str, float]:
    """Loss in nats/byte on held-out corpus A and on the corpus B test split."""
    return {"held_out_a": lm.evaluate(model, held_out_a), "test_b": lm.evaluate(model, test_b)}


def main(argv: list[str] | None = None) -> Path:
    """Run the pretraining and write the checkpoint; returns its path."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    config = lm.make_config(args.hidden_size, args.layers, args.heads, args.context)
    out = args.out or lm.checkpoint_path(config)

    train_a, held_a = lm.pretrain_streams(args.seed)
    held_out_a = lm.chunk(held_a, args.context)  # (N, T)
    test_b = lm.finetune_splits(args.seed, context=args.context).test  # (1000, T)
    model = lm.build_model(args.seed, config)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"config {lm.config_name(config)}: {n_params:,} parameters; corpus A train "
        f"{len(train_a):,} tokens, held out {held_out_a.numel():,}"
    )
    before = evaluate_both(model, held_out_a, test_b)
    print(f"before: held-out A {before['held_out_a']:.4f}, test B {before['test_b']:.4f} nats/byte")

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay
    )
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    start, running = time.perf_counter(), 0.0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        batch = lm.random_windows(train_a, args.batch_size, generator, args.context)
        loss = lm.lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            print(
                f"step {step + 1:5d}  train loss {running / n:.4f}  lr {lr_at(step, args):.2e}  "
                f"{time.perf_counter() - start:6.0f} s",
                flush=True,
            )
            running = 0.0
    seconds = time.perf_counter() - start

    after = evaluate_both(model, held_out_a, test_b)
    print(
        f"after {seconds:.0f} s: held-out A {after['held_out_a']:.4f}, "
        f"test B {after['test_b']:.4f} nats/byte"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        **{k: str(v) for k, v in vars(args).items()},
        "parameters": n_params,
        "seconds": round(seconds),
        "torch": torch.__version__,
        "before": before,
        "after": after,
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        state,
        str(out),
        metadata={"config": config.to_json_string(), "pretrain": json.dumps(record)},
    )
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, fp32)")
    return out


def ensure_checkpoint(path: str | Path | None = None) -> Path:
    """The checkpoint at ``path`` (default: ``lm.checkpoint_path()``), pretrained first if missing.

    A missing checkpoint is written by ``main`` with the default arguments, which set the
    thread count and deterministic algorithms for themselves; both are restored afterwards.
    """
    path = Path(path) if path is not None else lm.checkpoint_path()
    if not path.exists():
        threads = torch.get_num_threads()
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            main(["--out", str(path)])
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
    return path


if __name__ == "__main__":
    main()
