"""transformers.Trainer and accelerate drive the wrapper like any optimizer."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from reference import bitwise_equal, paper_fast_forward
from tiny_models import tiny_gpt_neox, token_batches

from fastforward import validation_closure

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
accelerate = pytest.importorskip("accelerate")

from fastforward.hf import FastForwardCallback  # noqa: E402

STEPS = 12
INTERVAL = 3


class _Examples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        (batch,) = token_batches(1, n, seed)
        self.ids = batch["input_ids"]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(output_dir, ff_options=None, callbacks=None, **overrides):
    model = peft.get_peft_model(
        tiny_gpt_neox(), peft.LoraConfig(r=4, target_modules=["query_key_value"])
    )
    adam = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    val = validation_closure(model, token_batches(1, 8, seed=99))
    # numpy hyperparameters: the checkpoint must still load with torch.load(weights_only=True)
    ff = paper_fast_forward(
        adam, model, val, np.int64(INTERVAL), max_tau=np.int64(16), patience=None,
        min_improvement=np.float64(1e-3), **(ff_options or {}),
    )  # fmt: skip
    scheduler = transformers.get_linear_schedule_with_warmup(ff, 2, STEPS)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        logging_steps=INTERVAL,
        save_steps=6,
        save_strategy="steps",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        **overrides,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_Examples(256, seed=0),
        optimizers=(ff, scheduler),
        callbacks=[FastForwardCallback(ff)] if callbacks is None else callbacks,
    )
    return trainer, model, ff


def _adapter_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_trainer_runs_stages_logs_them_and_resumes_bitwise(tmp_path):
    trainer, model, ff = _trainer(tmp_path / "run")
    trainer.train()
    assert ff.stats.optimizer_steps == STEPS
    assert [r.step for r in ff.stats.history] == [3, 6, 9, 12]
    assert ff.stats.simulated_steps > 0
    logged = [entry for entry in trainer.state.log_history if "ff/stages" in entry]
    assert [entry["ff/stages"] for entry in logged][:4] == [1, 2, 3, 4]
    assert {entry["ff/interval"] for entry in logged} == {3}

    resumed, resumed_model, resumed_ff = _trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-6"))
    assert resumed_ff.stats.optimizer_steps == STEPS
    assert [r.tau for r in resumed_ff.stats.history] == [r.tau for r in ff.stats.history]
    final, resumed_final = _adapter_weights(model), _adapter_weights(resumed_model)
    assert all(bitwise_equal(final[n], resumed_final[n]) for n in final)


def test_trainer_logs_the_cost_aware_decision(tmp_path):
    """A pass that costs 1000 steps never pays: the first stage steps aside, and the log says so."""
    trainer, _, ff = _trainer(
        tmp_path / "costly", ff_options={"cost_aware": True, "cost_ratio": 1000.0}
    )
    trainer.train()
    assert ff.stats.stages == 1
    assert ff.stats.gave_up_because == "payoff"
    logged = [entry for entry in trainer.state.log_history if "ff/stages" in entry]
    assert logged[-1]["ff/payoff"] == round(ff.stats.history[0].payoff, 4) < 1
    assert logged[-1]["ff/stepped_aside"] == 1
    assert logged[-1]["ff/active"] == 0


def test_trainer_gradient_accumulation_counts_optimizer_steps(tmp_path):
    trainer, _, ff = _trainer(tmp_path / "acc", gradient_accumulation_steps=2)
    trainer.train()
    assert ff.stats.optimizer_steps == STEPS
    assert len(ff.stats.history) == STEPS // INTERVAL


def test_accelerate_prepare_and_accumulation_count_real_steps():
    model = peft.get_peft_model(
        tiny_gpt_neox(), peft.LoraConfig(r=4, target_modules=["query_key_value"])
    )
    adam = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ff = paper_fast_forward(
        adam, model, validation_closure(model, token_batches(1, 8, 99)), INTERVAL, max_tau=16
    )
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, prepared = accelerator.prepare(model, ff)
    for batch in token_batches(4 * INTERVAL, 4, seed=0):
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            prepared.step()
            prepared.zero_grad()
    assert ff.stats.optimizer_steps == 2 * INTERVAL
    assert [r.step for r in ff.stats.history] == [INTERVAL, 2 * INTERVAL]


class _Tracker(transformers.TrainerCallback):
    """Stands in for TensorBoard or W&B: records every entry it is asked to log."""

    entries: ClassVar[list[dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        _Tracker.entries.append(dict(logs))


@pytest.mark.parametrize("attached", [False, True])
def test_attach_puts_the_counters_in_what_trackers_log(tmp_path, monkeypatch, attached):
    """Trainer registers its reporters (report_to) before the callbacks it is given."""
    from fastforward import hf

    monkeypatch.setattr(
        transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [_Tracker]
    )
    _Tracker.entries = []
    trainer, _, ff = _trainer(tmp_path / "tracked", callbacks=[] if attached else None)
    if attached:
        callback = hf.attach(trainer)
        assert callback.ff is ff
        assert trainer.callback_handler.callbacks[0] is callback
    trainer.train()
    logged = [entry for entry in _Tracker.entries if "loss" in entry]
    assert len(logged) == STEPS // INTERVAL
    stages = [entry.get("ff/stages") for entry in logged]
    assert stages == ([1, 2, 3, 4] if attached else [None] * 4)


def test_attach_replaces_a_callback_given_to_the_trainer(tmp_path):
    from fastforward import hf

    trainer, _, ff = _trainer(tmp_path / "twice")
    hf.attach(trainer, ff)
    mine = [c for c in trainer.callback_handler.callbacks if isinstance(c, FastForwardCallback)]
    assert len(mine) == 1
    assert trainer.callback_handler.callbacks[0] is mine[0]
