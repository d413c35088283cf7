"""The wrapper is an Optimizer that torch's own tools accept unchanged."""

from __future__ import annotations

import copy

import torch
from reference import bitwise_equal, paper_fast_forward
from strategies import Quadratic, fixed_quadratic


def _quadratic_ff(interval=2, lr=0.05, **kwargs):
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(torch.optim.Adam([model.x], lr=lr), model, model, interval, **kwargs)
    return model, ff


def _one_step(model, ff):
    model().backward()
    ff.step()
    ff.zero_grad()


def test_is_an_optimizer_sharing_groups_state_and_defaults():
    model, ff = _quadratic_ff()
    assert isinstance(ff, torch.optim.Optimizer)
    assert ff.param_groups is ff.optimizer.param_groups
    assert ff.state is ff.optimizer.state
    assert ff.defaults is ff.optimizer.defaults
    assert ff.optimizer.param_groups[0]["params"] == [model.x]


def test_lr_scheduler_through_the_wrapper_sets_the_wrapped_lr_and_ignores_stages():
    model, ff = _quadratic_ff(interval=1)
    scheduler = torch.optim.lr_scheduler.StepLR(ff, step_size=1, gamma=0.5)
    for _ in range(3):
        _one_step(model, ff)  # a stage after every step
        scheduler.step()
    assert ff.stats.stages + ff.stats.skipped_stages == 3
    assert ff.optimizer.param_groups[0]["lr"] == 0.05 * 0.5**3
    assert scheduler.last_epoch == 3


def test_step_hooks_on_wrapper_and_base_run_once_per_step():
    model, ff = _quadratic_ff(interval=1)
    seen = []
    ff.register_step_pre_hook(lambda opt, args, kwargs: seen.append("ff-pre"))
    ff.register_step_post_hook(lambda opt, args, kwargs: seen.append("ff-post"))
    ff.optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append("base-post"))
    _one_step(model, ff)
    assert ff.stats.stages == 1
    assert seen == ["ff-pre", "base-post", "ff-post"]


def test_zero_grad_clears_the_wrapped_parameters():
    model, ff = _quadratic_ff()
    model().backward()
    ff.zero_grad()
    assert model.x.grad is None
    model().backward()
    ff.zero_grad(set_to_none=False)
    assert torch.count_nonzero(model.x.grad) == 0


def test_param_group_added_later_is_moved_by_later_stages():
    model, ff = _quadratic_ff(interval=2)
    model.extra = extra = torch.nn.Parameter(torch.tensor([4.0, -4.0], dtype=torch.float64))
    ff.add_param_group({"params": [extra], "lr": 0.1})
    assert ff.optimizer.param_groups[1]["params"] == [extra]

    moves = []

    def validation():
        moves.append(extra.detach().clone())
        return model() + (extra**2).sum()

    ff.val_closure = validation
    for _ in range(2):
        (model() + (extra**2).sum()).backward()
        ff.step()
        ff.zero_grad()
    assert ff.stats.history[0].tau >= 1
    assert not bitwise_equal(moves[0], moves[1])  # τ = 1 moved the new group's tensor


def test_frozen_parameter_in_the_optimizer_is_not_moved():
    model, ff = _quadratic_ff(interval=1)
    ff.add_param_group({"params": [model.frozen]})
    before = model.frozen.detach().clone()
    _one_step(model, ff)
    assert ff.stats.stages == 1
    assert bitwise_equal(model.frozen.detach(), before)


def test_eval_mode_during_stages_and_each_submodule_mode_restored():
    model, ff = _quadratic_ff(interval=1)
    model.child = torch.nn.Dropout()
    model.train()
    model.child.eval()
    modes = []
    ff.val_closure = lambda: modes.append((model.training, model.child.training)) or model()
    _one_step(model, ff)
    assert set(modes) == {(False, False)}
    assert (model.training, model.child.training) == (True, False)


def test_a_closure_that_calls_train_leaves_every_submodule_as_it_was():
    model, ff = _quadratic_ff(interval=1)
    model.frozen_norm = torch.nn.BatchNorm1d(2)
    model.dropout = torch.nn.Dropout()
    model.train()
    model.frozen_norm.eval()  # running statistics the user froze
    evaluate = ff.val_closure

    def closure_that_switches_back():
        value = evaluate()
        model.train()  # as a closure written for use outside a stage would end
        return value

    ff.val_closure = closure_that_switches_back
    _one_step(model, ff)
    assert ff.stats.stages == 1
    modes = {name: module.training for name, module in model.named_modules()}
    assert modes == {"": True, "frozen_norm": False, "dropout": True}


def test_on_stage_receives_each_record():
    records = []
    model, ff = _quadratic_ff(interval=2, on_stage=records.append)
    for _ in range(6):
        _one_step(model, ff)
    assert records == ff.stats.history
    assert [r.step for r in records] == [2, 4, 6]


def test_stage_logs_on_the_fastforward_logger(caplog):
    model, ff = _quadratic_ff(interval=1)
    with caplog.at_level("INFO", logger="fastforward"):
        _one_step(model, ff)
    (record,) = caplog.records
    assert record.name == "fastforward"
    assert "stage after step 1: tau=" in record.getMessage()


def test_foreach_false_gives_the_same_bits_as_foreach():
    model_a, ff_a = _quadratic_ff(interval=2, foreach=True)
    model_b, ff_b = _quadratic_ff(interval=2, foreach=False)
    for _ in range(8):
        _one_step(model_a, ff_a)
        _one_step(model_b, ff_b)
    assert ff_a.stats.simulated_steps > 0
    assert bitwise_equal(model_a.x.detach(), model_b.x.detach())


def test_deepcopy_keeps_the_wrapper_working():
    model, ff = _quadratic_ff(interval=2)
    _one_step(model, ff)
    model_copy, ff_copy = copy.deepcopy((model, ff))
    assert ff_copy.model is model_copy
    assert ff_copy.param_groups is ff_copy.optimizer.param_groups
    _one_step(model_copy, ff_copy)
    _one_step(model, ff)
    assert bitwise_equal(model_copy.x.detach(), model.x.detach())


def test_a_copy_with_a_scheduler_attached_steps_itself_not_the_original():
    model, ff = _quadratic_ff(interval=2)
    scheduler = torch.optim.lr_scheduler.StepLR(ff, step_size=1, gamma=0.5)
    _one_step(model, ff)
    scheduler.step()
    original = model.x.detach().clone()
    model_copy, ff_copy, scheduler_copy = copy.deepcopy((model, ff, scheduler))
    for _ in range(4):
        _one_step(model_copy, ff_copy)
        scheduler_copy.step()
    assert (ff.stats.optimizer_steps, ff_copy.stats.optimizer_steps) == (1, 5)
    assert bitwise_equal(model.x.detach(), original)
    assert not bitwise_equal(model_copy.x.detach(), original)
    assert ff_copy.param_groups[0]["lr"] == ff.param_groups[0]["lr"] * 0.5**4


def test_stage_buffers_are_two_copies_allocated_once_and_freed_on_giving_up():
    model, ff = _quadratic_ff(interval=1, patience=2)
    _one_step(model, ff)
    buffers = [id(t) for t in ff._buffers.anchor + ff._buffers.delta]
    assert len(buffers) == 2 * len([model.x])
    assert [(t.shape, t.dtype) for t in ff._buffers.anchor + ff._buffers.delta] == [
        (model.x.shape, model.x.dtype)
    ] * 2
    for _ in range(3):
        _one_step(model, ff)
    assert [id(t) for t in ff._buffers.anchor + ff._buffers.delta] == buffers
    ff.val_closure = lambda: 0.0  # nothing improves: give up after two stages
    _one_step(model, ff)
    _one_step(model, ff)
    assert not ff.active
    assert ff._buffers.anchor == ff._buffers.delta == []
