"""The library's own costs on a model with many LoRA tensors: what a stage adds besides the passes.

Three measurements, each side by side in one process, repeated, reported as medians with their
interquartile range, with CUDA synchronised around every timed region:

- **step overhead**: ``ff.step()`` against the wrapped ``AdamW.step()`` on the same gradients,
  interleaved, on steps that run no stage (µs per step);
- **stage split**: one stage with a real validation pass, split into the time inside the
  validation closure and everything else (the library's work: snapshot, Δ, moves, landing);
- **moves per second**: stages whose loss costs nothing (a constant), so that the time is the
  moves ``W_n + τΔ`` over all LoRA tensors alone.

The model is a randomly initialised Llama (``transformers.LlamaConfig``) with LoRA r=8 on all
seven projections of every layer: ``14 * layers`` adapter tensors.

    python benchmarks/bench_hot_path.py --device cuda                 # ~1B parameters, 1008 tensors
    python benchmarks/bench_hot_path.py --device cpu --hidden 64      # a CPU-sized check, ~1 min

Writes ``benchmarks/results/local/hot_path-<device>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness

LOCAL_RESULTS = harness.RESULTS / "local"
MOVES = 50  # simulated steps per timed stage in the moves-per-second measurement


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """A random-init Llama with LoRA on every projection, and one batch of token ids."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.context,
        use_cache=False,
    )
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = LlamaForCausalLM(config).to(args.device, getattr(torch, args.dtype))
    model = get_peft_model(model, LoraConfig(r=8, target_modules=projections))
    batch = torch.randint(args.vocab, (args.batch, args.context), device=args.device)
    return model, batch


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds that ``fn()`` takes, the device synchronised before and after."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def summary(seconds: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median and quartiles, times ``scale``."""
    q1, median, q3 = statistics.quantiles(seconds, n=4)
    return {"median": median * scale, "q1": q1 * scale, "q3": q3 * scale, "n": len(seconds)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = harness.argument_parser(__doc__, threads=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="model dtype (default: float32)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default: 1024)")
    parser.add_argument("--layers", type=int, default=72, help="layers: 14 LoRA tensors each")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary (default: 32000)")
    parser.add_argument("--context", type=int, default=128, help="tokens per example")
    parser.add_argument("--batch", type=int, default=8, help="examples per pass (default: 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats (default: 30)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    # Taken before the run: the code that runs, whatever is committed while it does.
    model_name = f"random-init Llama, hidden {args.hidden}, {args.layers} layers, LoRA r=8"
    made_by = harness.provenance(model_name)

    import torch

    from fastforward import FastForward, fast_forward_stage

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model, batch = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = lambda: model(input_ids=batch, labels=batch).loss  # noqa: E731
    adamw = torch.optim.AdamW(params, lr=1e-4)
    ff = FastForward(adamw, model, lambda: loss().detach(), interval=10**9)  # no stage runs
    loss().backward()
    bare, wrapped = [], []
    with warnings.catch_warnings():  # the bare steps are on purpose
        warnings.simplefilter("ignore", UserWarning)
        adamw.step()  # warm up both paths, then interleave: one bare and one wrapped step
        ff.step()
        for _ in range(args.repeats):
            bare.append(timed(adamw.step, sync))
            wrapped.append(timed(ff.step, sync))
    overhead = [w - b for w, b in zip(wrapped, bare, strict=True)]

    in_closure: list[float] = []

    def closure() -> torch.Tensor:
        started = time.perf_counter()
        with torch.no_grad():
            value = loss().detach()
        sync()
        in_closure.append(time.perf_counter() - started)
        return value

    delta = [torch.full_like(p, 1e-6) for p in params]
    stage_totals, library = [], []
    for _ in range(max(3, args.repeats // 10)):
        in_closure.clear()
        stage_totals.append(timed(lambda: fast_forward_stage(params, delta, closure), sync))
        library.append(stage_totals[-1] - sum(in_closure))
    passes = len(in_closure)

    def free_stage() -> None:
        falling = itertools.count(0.0, -1.0)  # a free loss that keeps improving: τ = MOVES
        result = fast_forward_stage(
            params, delta, lambda: next(falling), search="linear", max_tau=MOVES
        )
        assert result.evaluations == MOVES + 1

    # One move per evaluation, plus the landing.
    moves = [(MOVES + 2) / timed(free_stage, sync) for _ in range(args.repeats)]

    report = {
        "device": str(torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"),
        "torch": torch.__version__,
        "config": vars(args) | {"out": str(args.out)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "lora_tensors": len(params),
        "step_overhead_us": summary(overhead, 1e6),
        "bare_step_ms": summary(bare, 1e3),
        "stage_seconds": summary(stage_totals),
        "stage_library_seconds": summary(library),
        "stage_validation_passes": passes,
        "moves_per_second": summary(moves),
        "provenance": made_by,
    }
    out = args.out or LOCAL_RESULTS / f"hot_path-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
