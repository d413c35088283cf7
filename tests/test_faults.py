"""Bad input fails loudly; a failure inside a stage leaves the best state it had."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import bitwise_equal, paper_fast_forward
from strategies import Quadratic, fixed_quadratic

from fastforward import SEARCH_STRATEGIES

INTERVAL = 3


class _FailingValidation:
    """The true validation loss, except that evaluation number ``fail_at`` (0-based, counted
    within the first stage) raises ``error`` or returns ``value`` instead."""

    def __init__(self, model, fail_at, *, error=None, value=None):
        self.model, self.fail_at, self.error, self.value = model, fail_at, error, value
        self.calls = 0
        self.points = []  # x at each evaluation, with its loss

    def __call__(self):
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            if self.error is not None:
                raise self.error
            return self.value
        loss = float(self.model())
        self.points.append((self.model.x.detach().clone(), loss))
        return loss


def _run_to_first_stage(validation_factory, *, lr=0.01, search="linear"):
    """A slow Adam on a quadratic, so that stages accept many steps; stop before the stage."""
    model = Quadratic(fixed_quadratic())
    validation = validation_factory(model)
    adam = torch.optim.Adam([model.x], lr=lr)
    ff = paper_fast_forward(adam, model, validation, INTERVAL, patience=None, search=search)
    for _ in range(INTERVAL - 1):
        model().backward()
        ff.step()
        ff.zero_grad()
    model().backward()
    return model, ff, validation


@functools.cache
def _evaluations_of_a_clean_stage(search):
    _, ff, _ = _run_to_first_stage(lambda m: _FailingValidation(m, -1), search=search)
    ff.step()
    return ff.stats.evaluations


def _best_point(points):
    """The point with the lowest finite loss among the evaluations (the first, on ties)."""
    best_x, best_loss = points[0]
    for x, loss in points[1:]:
        if loss < best_loss:
            best_x, best_loss = x, loss
    return best_x


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"]
)
@given(fail_at=st.integers(0, 8), search=st.sampled_from(SEARCH_STRATEGIES))
def test_exception_mid_stage_rolls_back_to_the_best_point_and_propagates(error, fail_at, search):
    assume(fail_at < _evaluations_of_a_clean_stage(search))  # the failure falls inside the stage
    model, ff, validation = _run_to_first_stage(
        lambda m: _FailingValidation(m, fail_at, error=error), search=search
    )
    model.train()
    with pytest.raises(type(error)):
        ff.step()

    assert model.training
    assert ff.stats.optimizer_steps == INTERVAL
    if fail_at == 0:  # failed at W_n itself
        assert validation.points == []
    else:
        assert bitwise_equal(model.x.detach(), _best_point(validation.points))
    assert ff.stats.evaluations == fail_at + 1

    # Training goes on, and the next stage runs normally.
    for _ in range(INTERVAL):
        ff.zero_grad()
        model().backward()
        ff.step()
    assert ff.stats.stages == 1
    assert ff.stats.history[-1].step == 2 * INTERVAL


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@given(fail_at=st.integers(1, 8))
def test_non_finite_loss_ends_the_stage_at_the_last_good_point(bad, fail_at):
    model, ff, validation = _run_to_first_stage(lambda m: _FailingValidation(m, fail_at, value=bad))
    ff.step()

    (record,) = ff.stats.history
    assert record.tau < fail_at
    assert bitwise_equal(model.x.detach(), _best_point(validation.points))
    assert record.loss_after == float(model().detach())
    assert record.loss_after <= record.loss_before


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_loss_at_w_n_skips_the_stage_and_keeps_w_n(bad):
    model, ff, _ = _run_to_first_stage(lambda m: _FailingValidation(m, 0, value=bad))
    bare_model, bare_adam = copy.deepcopy((model, ff.optimizer))
    bare_model.x.grad = model.x.grad.clone()
    ff.step()
    bare_adam.step()
    assert ff.stats.stages == 0
    assert ff.stats.skipped_stages == 1
    assert ff.stats.evaluations == 1
    assert bitwise_equal(model.x.detach(), bare_model.x.detach())


@pytest.mark.parametrize(
    "value",
    [torch.ones(2), torch.ones(1), "0.5", None, True],
    ids=["vector", "one-element-vector", "str", "None", "bool"],
)
def test_closure_returning_a_non_scalar_is_a_type_error_and_keeps_w_n(value):
    _model, ff, _ = _run_to_first_stage(lambda m: _FailingValidation(m, 0, value=value))
    with pytest.raises(TypeError, match="val_closure must return a Python number or a 0-dim"):
        ff.step()
    assert ff.stats.stages == 0


def test_scalar_kinds_the_closure_may_return():
    for value in (0.5, 1, torch.tensor(0.5), torch.tensor(0.5, dtype=torch.bfloat16)):
        _model, ff, _ = _run_to_first_stage(lambda m, v=value: _FailingValidation(m, 0, value=v))
        ff.step()
        assert ff.stats.history[0].loss_before == float(value)


def _adam():
    return torch.optim.Adam(torch.nn.Linear(2, 1).parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"interval": 0}, ValueError, "interval must be >= 1, got 0"),
        ({"interval": 2.0}, TypeError, "interval must be an int"),
        ({"warmup": -1}, ValueError, "warmup must be >= 0, got -1"),
        ({"max_tau": 0}, ValueError, "max_tau must be >= 1, got 0"),
        ({"patience": 0}, ValueError, "patience must be >= 1, got 0"),
        ({"patience": True}, TypeError, "patience must be an int"),
        ({"val_closure": 0.5}, TypeError, "val_closure must be a zero-argument callable"),
        ({"model": "model"}, TypeError, "model must be a torch.nn.Module"),
        ({"optimizer": object()}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"on_stage": 3}, TypeError, "on_stage must be callable or None"),
        ({"search": "golden"}, ValueError, "search must be one of"),
        ({"search": 3}, ValueError, r"or a callable \(ray, max_tau, start\), got 3"),
        ({"min_improvement": 1.0}, ValueError, r"min_improvement must be in \[0, 1\), got 1.0"),
        ({"min_improvement": "0.1"}, TypeError, "min_improvement must be a float"),
        ({"max_tau_ratio": 0.0}, ValueError, "max_tau_ratio must be positive and finite, got 0.0"),
        ({"max_tau_ratio": "4"}, TypeError, "max_tau_ratio must be a float or None"),
        ({"adaptive_interval": 6}, TypeError, r"adaptive_interval must be a \(shortest, longest\)"),
        ({"adaptive_interval": (2.0, 8)}, TypeError, r"adaptive_interval\[0\] must be an int"),
        ({"adaptive_interval": (0, 8)}, ValueError, r"adaptive_interval\[0\] must be >= 1"),
        ({"adaptive_interval": (8, 12)}, ValueError, r"shortest <= interval \(6\) <= longest"),
        (
            {"cost_aware": True, "val_closure": lambda stage: 0.0},
            ValueError,
            "cost_aware=True compares validation losses .* but val_closure takes `stage`",
        ),
    ],
    ids=lambda case: str(case) if isinstance(case, dict) else "",
)
def test_bad_arguments_are_rejected_naming_the_argument(kwargs, error, message):
    arguments = {"optimizer": _adam(), "model": torch.nn.Linear(2, 1), "val_closure": lambda: 0.0}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        paper_fast_forward(**arguments)


def test_optimizer_without_trainable_parameters_is_rejected():
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        paper_fast_forward(torch.optim.Adam(frozen.parameters()), frozen, lambda: 0.0)


def test_wrapping_a_wrapper_is_rejected():
    model = torch.nn.Linear(2, 1)
    ff = paper_fast_forward(torch.optim.Adam(model.parameters()), model, lambda: 0.0)
    with pytest.raises(TypeError, match="already a FastForward"):
        paper_fast_forward(ff, model, lambda: 0.0)


def test_an_fsdp1_model_is_refused_naming_fsdp2():
    from torch.distributed.fsdp import FullyShardedDataParallel

    # An FSDP1 module needs a process group to be built; its class is what the check reads.
    wrapped = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapped)
    wrapped.inner = torch.nn.Linear(2, 1)
    model = torch.nn.Sequential(wrapped)
    with pytest.raises(TypeError, match=r"FullyShardedDataParallel \(FSDP1\).*fully_shard"):
        paper_fast_forward(torch.optim.Adam(model.parameters()), model, lambda: 0.0)


def test_deepspeed_zero_optimizer_is_refused():
    class DeepSpeedZeroOptimizer(torch.optim.SGD):  # stands in for deepspeed's own class
        __module__ = "deepspeed.runtime.zero.stage_1_and_2"

    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match="DeepSpeed optimizer, which updates the model only after"):
        paper_fast_forward(DeepSpeedZeroOptimizer(model.parameters(), lr=0.1), model, lambda: 0.0)


def test_optimizer_over_copies_of_the_model_parameters_is_refused_at_construction():
    model = torch.nn.Linear(2, 1)
    masters = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]  # ZeRO-like
    with pytest.raises(RuntimeError, match="2 of the optimizer's 2 trainable tensors are not"):
        paper_fast_forward(torch.optim.SGD(masters, lr=0.1), model, lambda: 0.0, interval=1)
