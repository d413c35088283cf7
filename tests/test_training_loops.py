"""Schedulers, mixed precision, accumulation and clipping through the wrapper."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reference import bitwise_equal, paper_fast_forward

STEPS = 12


def _regression(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model.to(dtype)
    x = torch.randn(64, 8, dtype=dtype)
    y = x.sum(1, keepdim=True)
    loss_fn = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    return model, loss_fn


SCHEDULERS = {
    "LambdaLR-warmup": lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / 4)
    ),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=STEPS
    ),
    "transformers-linear-warmup": lambda opt: pytest.importorskip(
        "transformers"
    ).get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=STEPS),
}


@pytest.mark.parametrize("make_scheduler", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_scheduler_on_the_wrapper_drives_the_wrapped_lr_like_on_the_bare_optimizer(make_scheduler):
    model, loss_fn = _regression()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    ff = paper_fast_forward(adam, model, loss_fn, interval=2, patience=None)
    scheduler = make_scheduler(ff)
    bare_scheduler = make_scheduler(torch.optim.Adam(copy.deepcopy(model).parameters(), lr=0.01))
    for _ in range(STEPS):
        assert adam.param_groups[0]["lr"] == bare_scheduler.get_last_lr()[0]
        loss_fn().backward()
        ff.step()
        ff.zero_grad()
        scheduler.step()
        bare_scheduler.optimizer.step()
        bare_scheduler.step()
    assert ff.stats.stages == STEPS // 2
    assert scheduler.last_epoch == bare_scheduler.last_epoch == STEPS
    assert scheduler.get_last_lr() == bare_scheduler.get_last_lr()


def _poison_grads(model):
    for p in model.parameters():
        p.grad.fill_(math.inf)


def test_grad_scaler_skipped_step_is_not_a_step_and_never_a_direction():
    model, loss_fn = _regression()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    deltas = []
    ff = paper_fast_forward(adam, model, loss_fn, interval=2, patience=None, on_stage=deltas.append)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    poisoned = {3, 4}  # scaler calls; steps 3 and 4 would have been the 2nd stage's two steps
    for call in range(1, 9):
        scaler.scale(loss_fn()).backward()
        if call in poisoned:
            _poison_grads(model)
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(ff)
        scaler.update()
        ff.zero_grad()
        if call in poisoned:
            assert all(
                bitwise_equal(p.detach(), b)
                for p, b in zip(model.parameters(), before, strict=True)
            )
    assert ff.stats.optimizer_steps == 8 - len(poisoned)
    assert [r.step for r in ff.stats.history] == [2, 4, 6]


def test_zero_update_runs_no_stage():
    model, loss_fn = _regression()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []
    ff = paper_fast_forward(sgd, model, lambda: calls.append(1) or loss_fn(), interval=1)
    loss_fn().backward()
    ff.zero_grad(set_to_none=False)  # all-zero gradients: SGD moves nothing
    ff.step()
    assert calls == []
    assert ff.stats.skipped_stages == 1


def test_autocast_bfloat16_training_and_validation_on_cpu():
    model, loss_fn = _regression()

    def val_closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn()

    ff = paper_fast_forward(torch.optim.Adam(model.parameters(), lr=1e-3), model, val_closure, 3)
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        ff.step()
        ff.zero_grad()
    assert ff.stats.stages == STEPS // 3
    assert ff.stats.simulated_steps > 0
    assert all(r.loss_after < r.loss_before for r in ff.stats.history if r.tau)


def test_bfloat16_weights_stage_lowers_the_loss_without_accumulating_rounding():
    model, loss_fn = _regression(torch.bfloat16)
    ff = paper_fast_forward(
        torch.optim.Adam(model.parameters(), lr=1e-3), model, loss_fn, 3, max_tau=200
    )
    for _ in range(3):
        loss_fn().backward()
        ff.step()
        ff.zero_grad()
    (record,) = ff.stats.history
    assert record.tau > 10  # a long stage, where x += Δ repeated would drift
    assert record.loss_after < record.loss_before
    anchor = ff._buffers.anchor[0]
    expected = anchor.clone().add_(ff._buffers.delta[0], alpha=-record.tau)  # the buffer holds -Δ
    assert bitwise_equal(next(model.parameters()).detach(), expected)


def test_gradient_accumulation_and_clipping_count_optimizer_steps_not_micro_batches():
    model, loss_fn = _regression()
    ff = paper_fast_forward(
        torch.optim.Adam(model.parameters(), lr=1e-2), model, loss_fn, interval=2
    )
    accumulation = 4
    for micro_batch in range(1, 4 * accumulation + 1):
        (loss_fn() / accumulation).backward()
        if micro_batch % accumulation == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
            ff.step()
            ff.zero_grad()
    assert ff.stats.optimizer_steps == 4
    assert [r.step for r in ff.stats.history] == [2, 4]
