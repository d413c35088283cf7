"""Two CPU processes on the gloo backend: every rank takes the same stage decisions."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist
from gloo import run_on_ranks
from reference import bitwise_equal, paper_fast_forward

WORLD = 2
STEPS = 12


def _ddp_worker(rank: int) -> dict:
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    x_train, x_val = torch.randn(64, 8, generator=data), torch.randn(32, 8, generator=data)
    y_train, y_val = x_train.sum(1, keepdim=True), x_val.sum(1, keepdim=True) * (1 + rank)
    local_losses = []

    def val_closure():
        loss = torch.nn.functional.mse_loss(ddp(x_val), y_val)
        local_losses.append(float(loss))
        return loss

    ff = paper_fast_forward(
        torch.optim.Adam(ddp.parameters(), lr=1e-2), ddp, val_closure, 3, patience=None
    )
    for _ in range(STEPS):
        torch.nn.functional.mse_loss(ddp(x_train), y_train).backward()
        ff.step()
        ff.zero_grad()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "taus": [r.tau for r in ff.stats.history],
        "losses": [(r.loss_before, r.loss_after) for r in ff.stats.history],
        "evaluations": ff.stats.evaluations,
        "local_losses": local_losses,
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_ranks_agree_on_every_stage_and_end_bitwise_identical(tmp_path):
    rank0, rank1 = run_on_ranks(_ddp_worker, WORLD, tmp_path)

    assert rank0["local_losses"] != rank1["local_losses"]  # the ranks really saw different data
    assert len(rank0["taus"]) == STEPS // 3
    assert sum(rank0["taus"]) > 0
    assert rank0["taus"] == rank1["taus"]
    assert rank0["losses"] == rank1["losses"]  # the reduced (mean) losses
    assert rank0["evaluations"] == rank1["evaluations"]
    assert all(bitwise_equal(a, b) for a, b in zip(rank0["params"], rank1["params"], strict=True))


def _cost_aware_worker(rank: int, delta_span: str = "step") -> dict:
    """On rank 1's clock each validation pass takes 50 ms more: the ranks time other ratios."""
    import time

    skew, real_clock = [0.0], time.perf_counter
    if rank == 1:
        time.perf_counter = lambda: real_clock() + skew[0]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    data = torch.Generator().manual_seed(100 + rank)
    x_train, x_val = torch.randn(64, 8, generator=data), torch.randn(32, 8, generator=data)
    y_train, y_val = x_train.sum(1, keepdim=True), x_val.sum(1, keepdim=True)

    def val_closure():
        skew[0] += 0.05
        return torch.nn.functional.mse_loss(ddp(x_val), y_val)

    adam = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    ff = paper_fast_forward(
        adam, ddp, val_closure, 3, patience=None, cost_aware=True, delta_span=delta_span
    )
    for _ in range(STEPS):
        time.sleep(0.005)  # an iteration's data loading
        torch.nn.functional.mse_loss(ddp(x_train), y_train).backward()
        ff.step()
        ff.zero_grad()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "payoffs": [r.payoff for r in ff.stats.history],
        "gave_up_at_step": ff.stats.gave_up_at_step,
        "evaluations": ff.stats.evaluations,
        "stage_seconds": ff.stats.stage_seconds,
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("delta_span", ["step", "interval"])  # a pass before, or in, a stage
def test_ranks_with_different_clocks_agree_on_every_payoff(tmp_path, delta_span):
    worker = functools.partial(_cost_aware_worker, delta_span=delta_span)
    rank0, rank1 = run_on_ranks(worker, WORLD, tmp_path)

    passes = rank0["evaluations"]
    assert rank1["stage_seconds"] > rank0["stage_seconds"] + 0.04 * passes  # their clocks differ
    assert rank0["payoffs"]
    assert None not in rank0["payoffs"]
    assert rank0["payoffs"] == rank1["payoffs"]
    assert rank0["gave_up_at_step"] == rank1["gave_up_at_step"]
    assert rank0["evaluations"] == rank1["evaluations"]
    assert all(bitwise_equal(a, b) for a, b in zip(rank0["params"], rank1["params"], strict=True))
