"""Every PEFT adapter kind: a stage moves exactly the trainable tensors, nothing else."""

from __future__ import annotations

import pytest
import torch
from reference import bitwise_equal, paper_fast_forward
from tiny_models import tiny_gpt_neox, token_batches

from fastforward import validation_closure

peft = pytest.importorskip("peft")

MAX_TAU = 16  # bounds the test's cost; a fresh adapter would otherwise accept hundreds of steps

ADAPTERS = {
    "LoRA": lambda: peft.LoraConfig(r=4, target_modules=["query_key_value"]),
    "DoRA": lambda: peft.LoraConfig(r=4, target_modules=["query_key_value"], use_dora=True),
    "rsLoRA": lambda: peft.LoraConfig(r=4, target_modules=["query_key_value"], use_rslora=True),
    "LoHa": lambda: peft.LoHaConfig(r=4, target_modules=["query_key_value", "dense"]),
    "IA3": lambda: peft.IA3Config(
        target_modules=["query_key_value", "dense_4h_to_h"], feedforward_modules=["dense_4h_to_h"]
    ),
    "LoRA+modules_to_save": lambda: peft.LoraConfig(
        r=4, target_modules=["query_key_value"], modules_to_save=["embed_out"]
    ),
}


@pytest.mark.parametrize("make_config", ADAPTERS.values(), ids=ADAPTERS.keys())
def test_stage_moves_only_trainable_adapter_tensors(make_config):
    model = peft.get_peft_model(tiny_gpt_neox(), make_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    moved_by_stage = {}

    def snapshot_after_base_step(optimizer, args, kwargs):
        moved_by_stage.update({n: p.detach().clone() for n, p in model.named_parameters()})

    adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    adam.register_step_post_hook(snapshot_after_base_step)
    val = validation_closure(model, token_batches(1, 8, seed=1))
    ff = paper_fast_forward(
        adam, model, val, interval=2, max_tau=MAX_TAU, patience=None, min_improvement=0.0
    )
    model.train()
    for batch in token_batches(2, 8, seed=0):
        model(**batch).loss.backward()
        ff.step()
        ff.zero_grad()

    (record,) = ff.stats.history
    assert record.tau >= 1
    assert record.loss_after < record.loss_before
    for name, param in model.named_parameters():
        if name in trainable:
            continue
        assert bitwise_equal(param.detach(), frozen_before[name]), name
    changed = {
        n for n, p in model.named_parameters() if not bitwise_equal(p.detach(), moved_by_stage[n])
    }
    assert changed
    assert changed <= trainable
