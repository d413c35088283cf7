"""torch.compile'd models and FSDP2-sharded models as the thing being trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from gloo import run_on_ranks
from reference import bitwise_equal, paper_fast_forward
from strategies import dcp_state

# Dynamo traces Adam's update into a graph whose float32 arithmetic is ordered differently from
# the eager kernels (measured: 5e-7 apart after six bare steps), and a stage multiplies Δ by τ
# (32 here), so the two runs agree on every τ but their losses only to ~1e-5.
COMPILED_LOSS_RTOL = 1e-4


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    return model, x, x.sum(1, keepdim=True)


def test_compiled_model_in_training_and_in_the_validation_closure():
    model, x, y = _model_and_data()
    compiled = torch.compile(model, backend="eager")  # the graph capture, without a C++ build
    loss_fn = lambda: torch.nn.functional.mse_loss(compiled(x), y)  # noqa: E731
    ff = paper_fast_forward(
        torch.optim.Adam(model.parameters(), lr=1e-2), compiled, loss_fn, interval=3
    )
    eager_model, _, _ = _model_and_data()
    eager_loss = lambda: torch.nn.functional.mse_loss(eager_model(x), y)  # noqa: E731
    eager = paper_fast_forward(
        torch.optim.Adam(eager_model.parameters(), lr=1e-2), eager_model, eager_loss, 3
    )
    for _ in range(9):
        for step_loss, opt in ((loss_fn, ff), (eager_loss, eager)):
            step_loss().backward()
            opt.step()
            opt.zero_grad()
    assert ff.stats.stages == 3
    assert [r.tau for r in ff.stats.history] == [r.tau for r in eager.stats.history]
    assert ff.stats.simulated_steps > 0


def test_compiled_step_compiles_the_base_step_and_runs_stages_eagerly():
    runs = []
    for compile_step in (False, True):
        model, x, y = _model_and_data()
        loss_fn = lambda m=model, x=x, y=y: torch.nn.functional.mse_loss(m(x), y)  # noqa: E731
        ff = paper_fast_forward(torch.optim.Adam(model.parameters(), lr=1e-2), model, loss_fn, 2)
        step = torch.compile(ff.step, backend="eager") if compile_step else ff.step
        for _ in range(6):
            loss_fn().backward()
            step()
            ff.zero_grad()
        runs.append(ff.stats)
    eager_stats, compiled_stats = runs
    assert compiled_stats.optimizer_steps == 6
    assert [r.tau for r in compiled_stats.history] == [r.tau for r in eager_stats.history]
    assert compiled_stats.simulated_steps > 0
    torch.testing.assert_close(
        [r.loss_after for r in compiled_stats.history],
        [r.loss_after for r in eager_stats.history],
        rtol=COMPILED_LOSS_RTOL,
        atol=0,
    )


def _fsdp_run(rank: int, layout: str = "per-layer") -> dict:
    """Nine steps, stages every 3, sharded per layer or in the root only; τs, full parameters."""
    from torch.distributed.fsdp import fully_shard

    model, x, y = _model_and_data()
    x, y = x[rank::2], y[rank::2]
    if layout == "per-layer":
        for layer in (model[0], model[2]):
            fully_shard(layer)
    fully_shard(model)  # the root keeps its parameters gathered after a forward
    loss_fn = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    ff = paper_fast_forward(torch.optim.Adam(model.parameters(), lr=1e-2), model, loss_fn, 3)
    for _ in range(9):
        loss_fn().backward()
        ff.step()
        ff.zero_grad()
    full = [p.full_tensor().detach().clone() for p in model.parameters()]
    return {"taus": [r.tau for r in ff.stats.history], "params": full}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_fsdp2_ranks_agree_and_hold_the_same_full_parameters(tmp_path):
    rank0, rank1 = run_on_ranks(_fsdp_run, 2, tmp_path)
    assert len(rank0["taus"]) == 3
    assert sum(rank0["taus"]) > 0
    assert rank0["taus"] == rank1["taus"]
    assert all(bitwise_equal(a, b) for a, b in zip(rank0["params"], rank1["params"], strict=True))


def _dcp_worker(rank: int, checkpoint: str) -> dict:
    """Train, save with DCP (model, optimizer, wrapper state), load into a fresh run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    def sharded_run():
        model, x, y = _model_and_data()
        fully_shard(model)
        loss_fn = lambda: torch.nn.functional.mse_loss(model(x[rank::2]), y[rank::2])  # noqa: E731
        adam = torch.optim.Adam(model.parameters(), lr=1e-2)
        # A margin no stage can clear: the first stage fails and Fast Forward gives up.
        return model, paper_fast_forward(adam, model, loss_fn, 3, patience=1, min_improvement=0.99)

    model, ff = sharded_run()
    for _ in range(4):
        torch.nn.functional.mse_loss(model(_model_and_data()[1]), _model_and_data()[2]).backward()
        ff.step()
        ff.zero_grad()
    dcp.save(dcp_state(model, ff), checkpoint_id=checkpoint)

    fresh_model, fresh = sharded_run()
    state = dcp_state(fresh_model, fresh)
    dcp.load(state, checkpoint_id=checkpoint)
    set_model_state_dict(fresh_model, state["model"])
    set_optimizer_state_dict(fresh_model, fresh, state["optim"])
    return {"saved": ff.wrapper_state_dict(), "loaded": fresh.wrapper_state_dict()}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_fsdp2_with_dcp_checkpoints_the_wrapper_state_beside_the_optimizer(tmp_path):
    from functools import partial

    ranks = run_on_ranks(partial(_dcp_worker, checkpoint=str(tmp_path / "dcp")), 2, tmp_path)
    saved = _without_timings(ranks[0]["saved"])
    assert saved["gave_up"] is True
    assert saved["stats"]["optimizer_steps"] == 4
    for result in ranks:  # DCP keeps one rank's copy of a non-tensor entry, with its timings
        assert _without_timings(result["saved"]) == saved
        assert _without_timings(result["loaded"]) == saved


def _without_timings(state: dict) -> dict:
    stats = dict(state["stats"], stage_seconds=None)
    stats["history"] = [dict(record, seconds=None) for record in stats["history"]]
    return dict(state, stats=stats)


def _interval_delta_resume_worker(rank: int, folder: str) -> dict:
    """delta_span="interval" under FSDP2: each rank checkpoints its shard of the snapshot."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    def sharded_run():
        model, x, y = _model_and_data()
        fully_shard(model)
        loss_fn = lambda: torch.nn.functional.mse_loss(model(x[rank::2]), y[rank::2])  # noqa: E731
        adam = torch.optim.Adam(model.parameters(), lr=1e-3)
        ff = paper_fast_forward(adam, model, loss_fn, 3, delta_span="interval", min_improvement=0.0)
        return model, ff, loss_fn

    def train(model, ff, loss_fn, steps):
        for _ in range(steps):
            loss_fn().backward()
            ff.step()
            ff.zero_grad()

    model, ff, loss_fn = sharded_run()
    train(model, ff, loss_fn, 10)
    uninterrupted = [p.full_tensor().detach().clone() for p in model.parameters()]

    model, ff, loss_fn = sharded_run()
    train(model, ff, loss_fn, 5)  # inside the second interval: its snapshot is held
    path = Path(folder) / f"checkpoint{rank}.pt"
    torch.save({"model": model.state_dict(), "optim": ff.state_dict()}, path)
    model, ff, loss_fn = sharded_run()
    checkpoint = torch.load(path, weights_only=False)  # DTensors in the base optimizer's state
    model.load_state_dict(checkpoint["model"])
    ff.load_state_dict(checkpoint["optim"])
    train(model, ff, loss_fn, 5)
    resumed = [p.full_tensor().detach().clone() for p in model.parameters()]

    model, ff, loss_fn = sharded_run()  # the same through DCP: each rank writes its shards
    train(model, ff, loss_fn, 5)
    dcp.save(dcp_state(model, ff), checkpoint_id=Path(folder) / "dcp")
    model, ff, loss_fn = sharded_run()
    state = dcp_state(model, ff)
    dcp.load(state, checkpoint_id=Path(folder) / "dcp")
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, ff, state["optim"])
    snapshot_after_dcp = ff._buffers.taken_at
    train(model, ff, loss_fn, 5)
    return {
        "snapshot_step": checkpoint["optim"]["fastforward"]["interval_snapshot"]["step"],
        "taus": [r.tau for r in ff.stats.history],
        "uninterrupted": uninterrupted,
        "resumed": resumed,
        "snapshot_after_dcp": snapshot_after_dcp,
        "resumed_through_dcp": [p.full_tensor().detach().clone() for p in model.parameters()],
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_fsdp2_resume_with_interval_delta_is_bitwise_from_each_ranks_shard(tmp_path):
    """Through torch.save, one file per rank, and through DCP."""
    from functools import partial

    worker = partial(_interval_delta_resume_worker, folder=str(tmp_path))
    for result in run_on_ranks(worker, 2, tmp_path):
        assert result["snapshot_step"] == 4
        assert len(result["taus"]) == 3
        assert sum(result["taus"]) > 0
        pairs = zip(result["resumed"], result["uninterrupted"], strict=True)
        assert all(bitwise_equal(a, b) for a, b in pairs)
        assert result["snapshot_after_dcp"] == 4
        pairs = zip(result["resumed_through_dcp"], result["uninterrupted"], strict=True)
        assert all(bitwise_equal(a, b) for a, b in pairs)


def _root_sharding_worker(rank: int) -> dict:
    """The same run with the parameters in the root FSDP2 module, or in per-layer ones."""
    return {layout: _fsdp_run(rank, layout) for layout in ("root", "per-layer")}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_fsdp2_stages_evaluate_and_land_on_the_moved_shards_in_the_root_module(tmp_path):
    """A validation pass has no backward to reshard the root: each point must be regathered."""
    for runs in run_on_ranks(_root_sharding_worker, 2, tmp_path):
        assert runs["root"]["taus"] == runs["per-layer"]["taus"]
        assert sum(runs["root"]["taus"]) > 0
        pairs = zip(runs["root"]["params"], runs["per-layer"]["params"], strict=True)
        assert all(bitwise_equal(a, b) for a, b in pairs)
