"""The validation loss along Δ of the first stage on SmolLM2 at the paper's lr: is it convex?

Trains the first 6 Adam steps of ``bench_llm.py``'s run at 4e-5, seed 0, with the data
settings recorded in that run's JSON (so the same model, data and batches), then, at its first
stage, records which τ the default search (``parabolic``) probes, then the loss at a grid of τ
out to 400. Writes ``benchmarks/results/llm/ray_scan.txt``: the probe sequence, then one
``τ loss`` line per point evaluated. One validation pass per point.

    python benchmarks/llm_ray_scan.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

OUT = harness.RESULTS / "llm"
RUN = OUT / "runs" / "ff-parabolic-lora-lr-4e-05-seed-0.json"  # written by bench_llm.py
GRID = [*range(160, 190), 100, 120, 140, 200, 220, 250, 280, 300, 320, 340, 350, 360, 380, 400]


def main() -> None:
    import torch

    from benchmarks import smollm
    from benchmarks.bench_llm import MODEL
    from fastforward import FastForward
    from fastforward.functional import parabolic_search

    if not RUN.exists():
        raise FileNotFoundError(f"llm_ray_scan: no {RUN}; run `python benchmarks/bench_llm.py`")
    config = json.loads(RUN.read_text())["config"]
    header = f"# {json.dumps(harness.provenance(MODEL))}"  # before the run: the code that runs
    torch.set_num_threads(1)
    sizes = ("n_train", "n_test", "n_val", "context")
    data = smollm.finetune_splits(**{k: config[k] for k in sizes})
    base = smollm.load_model().train()
    model = smollm.add_lora(base, seed=config["seed"])
    params = [p for p in model.parameters() if p.requires_grad]
    batches = harness.epoch_batches(data["train"], config["batch"], 1, config["seed"])
    lines: list[str] = []

    def scan(ray, max_tau, start):  # type: ignore[no-untyped-def]
        parabolic_search(ray, max_tau, start)
        lines.append(f"parabolic probes, in order: {list(ray.losses)}")
        for tau in GRID:
            ray.evaluate(tau)
        lines.extend(f"{tau} {ray.losses[tau]!r}" for tau in sorted(ray.losses))

    adam = torch.optim.Adam(params, lr=config["lr"])
    ff = FastForward(adam, model, lambda: smollm.lm_loss(model, data["val"]), search=scan)
    for batch in batches[: ff.interval]:
        smollm.lm_loss(model, batch).backward()
        ff.step()
        ff.zero_grad()
    out = OUT / "ray_scan.txt"
    out.write_text("\n".join([header, *lines]) + "\n")
    print(header, lines[0], f"wrote {out}", sep="\n")


if __name__ == "__main__":
    main()
