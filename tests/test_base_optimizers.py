"""The wrapper contract over a table of base optimizers: bitwise, disabled, resume, rollback.

The table follows the ``OptimizerInfo`` idea of torch's test suite
(``torch/testing/_internal/common_optim.py``): one entry per optimizer says how to build it and
how to drive it, and every test of the contract runs over the whole table. The problem is a
small least-squares fit, ``nn.Linear(4, 3)`` in float64 (a 2-D weight, so that Adafactor
factors its second moment, and a 1-D bias), judged on held-out rows. Every comparison is bitwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from reference import (
    ReferenceFastForward,
    all_bitwise_equal,
    bitwise_equal,
    paper_fast_forward,
    parameters_of,
    without_timings,
)
from strategies import through_disk


@dataclass(frozen=True)
class OptimizerInfo:
    """A base optimizer and how to drive it (torch's ``common_optim.OptimizerInfo``, cut down)."""

    name: str  # the parametrize id
    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs_closure: bool = False  # steps only as step(closure): it evaluates the loss itself
    marks: tuple[pytest.MarkDecorator, ...] = ()  # a documented skip or xfail, never a silent one

    def build(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return self.cls(model.parameters(), **self.kwargs)


# Learning rates small enough that every stage of the first few moves the model (τ > 0).
OPTIMIZERS = [
    OptimizerInfo("sgd_momentum", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    OptimizerInfo("adam", torch.optim.Adam, {"lr": 1e-2}),
    OptimizerInfo("adamw", torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    OptimizerInfo("adagrad", torch.optim.Adagrad, {"lr": 0.05}),
    OptimizerInfo("rmsprop", torch.optim.RMSprop, {"lr": 1e-3}),
    OptimizerInfo("adafactor", torch.optim.Adafactor, {"lr": 1e-2}),
    OptimizerInfo("lbfgs", torch.optim.LBFGS, {"lr": 0.1, "max_iter": 3, "history_size": 4}, True),
]

each_optimizer = pytest.mark.parametrize(
    "info", [pytest.param(info, id=info.name, marks=info.marks) for info in OPTIMIZERS]
)

INTERVAL = 3
STEPS = 4 * INTERVAL  # four stages


def _data() -> tuple[torch.Tensor, ...]:
    """Training rows, held-out validation rows: ``y = x W + noise``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=generator, dtype=torch.float64)
    w = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(48, 3, generator=generator, dtype=torch.float64)
    return x[:32], y[:32], x[32:], y[32:]


X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = _data()


def _model() -> torch.nn.Linear:
    """The same starting point every time."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return torch.nn.Linear(4, 3, dtype=torch.float64)


def _val_loss(model: torch.nn.Module) -> float:
    return float(torch.nn.functional.mse_loss(model(X_VAL), Y_VAL))


def _setup(info, kind, val_closure=None, **options):
    """A fresh model and its optimizer, wrapped in ``kind``; stages every ``INTERVAL`` steps."""
    model = _model()
    if val_closure is None:
        val_closure = lambda: _val_loss(model)  # noqa: E731
    options = {"patience": None, **options}
    run = kind(info.build(model), model, val_closure, INTERVAL, **options)
    return model, run


def _train_step(info, model, optimizer):
    """One step on the training rows, through ``step(closure)`` where the optimizer needs it."""

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X_TRAIN), Y_TRAIN)
        loss.backward()
        return loss

    if info.needs_closure:
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


def _train(info, model, optimizer, steps):
    """``steps`` training steps; the parameters after each."""
    trajectory = []
    for _ in range(steps):
        _train_step(info, model, optimizer)
        trajectory.append(parameters_of(model))
    return trajectory


def _same_state(a, b):
    """Bitwise equality of nested optimizer state: tensors by their bits, the rest by ``==``."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and bitwise_equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


def _assert_same_optimizer_state(a, b):
    assert _same_state(a.state_dict()["state"], b.state_dict()["state"])


@each_optimizer
@pytest.mark.parametrize("delta_span", ["step", "interval"])
def test_wrapper_is_bitwise_the_reference(info, delta_span):
    model, ff = _setup(info, paper_fast_forward, delta_span=delta_span)
    reference_model, reference = _setup(info, ReferenceFastForward, delta_span=delta_span)
    for n in range(1, STEPS + 1):
        _train_step(info, model, ff)
        _train_step(info, reference_model, reference)
        assert all_bitwise_equal(parameters_of(model), parameters_of(reference_model)), n
    assert without_timings(ff.stats) == without_timings(reference.stats)
    assert ff.stats.stages == STEPS // INTERVAL
    assert ff.stats.history[0].tau > 0  # a stage that moved the model, not only τ = 0
    _assert_same_optimizer_state(ff, reference.optimizer)


@each_optimizer
def test_disabled_wrapper_is_bitwise_the_bare_optimizer(info):
    evaluations = []
    model = _model()
    ff = paper_fast_forward(
        info.build(model),
        model,
        lambda: evaluations.append(1) or _val_loss(model),
        interval=1,
        enabled=False,
    )
    bare_model = _model()
    bare = info.build(bare_model)
    trajectory = _train(info, model, ff, STEPS)
    expected = _train(info, bare_model, bare, STEPS)
    assert all(all_bitwise_equal(a, b) for a, b in zip(trajectory, expected, strict=True))
    _assert_same_optimizer_state(ff, bare)
    assert evaluations == []
    assert ff.stats.optimizer_steps == STEPS


# Resume with every piece of schedule state in play: the adaptive interval and the step of the
# last stage, the previous τ (warm_start starts from it), the count of failed stages in a row;
# or Δ over the interval, whose snapshot of W_s the checkpoint must carry inside the interval.
RESUME_OPTIONS = {
    "adaptive-interval": {"adaptive_interval": (2, 6), "search": "warm_start", "patience": 2},
    "interval-delta": {"delta_span": "interval", "search": "warm_start", "patience": 2},
}


@each_optimizer
@pytest.mark.parametrize("options", RESUME_OPTIONS.values(), ids=RESUME_OPTIONS.keys())
@pytest.mark.parametrize("where", ["right-after-a-stage", "one-step-later", "before-a-stage"])
def test_resumed_run_is_bitwise_the_uninterrupted_run(info, options, where):
    """Model and ``ff.state_dict()`` (the wrapped optimizer's state included) through disk."""
    reference_model, reference = _setup(info, ReferenceFastForward, **options)
    expected = _train(info, reference_model, reference, STEPS)
    stage_steps = [record.step for record in reference.stats.history]
    assert len(stage_steps) >= 3
    assert stage_steps[-2] + 1 < stage_steps[-1]  # a step between the last two stages
    split = {
        "right-after-a-stage": stage_steps[-2],
        "one-step-later": stage_steps[-2] + 1,
        "before-a-stage": stage_steps[-1] - 1,
    }[where]

    model, ff = _setup(info, paper_fast_forward, **options)
    trajectory = _train(info, model, ff, split)
    checkpoint = through_disk({"model": model.state_dict(), "optimizer": ff.state_dict()})
    has_snapshot = "interval_snapshot" in checkpoint["optimizer"]["fastforward"]
    assert has_snapshot == (options.get("delta_span") == "interval" and split not in stage_steps)
    model, ff = _setup(info, paper_fast_forward, **options)
    model.load_state_dict(checkpoint["model"])
    ff.load_state_dict(checkpoint["optimizer"])
    trajectory += _train(info, model, ff, STEPS - split)

    for n, (a, b) in enumerate(zip(trajectory, expected, strict=True), 1):
        assert all_bitwise_equal(a, b), f"parameters differ after step {n}"
    assert without_timings(ff.stats) == without_timings(reference.stats)
    assert ff.current_interval == reference.current_interval
    _assert_same_optimizer_state(ff, reference.optimizer)


class _ValidationFailed(Exception):
    pass


class _FailingValidation:
    """The validation loss, but call ``fail_at`` raises or returns NaN.

    Records the loss and the parameters of every call that returned, in order.
    """

    def __init__(self, model, fail_at, failure):
        self.model, self.fail_at, self.failure = model, fail_at, failure
        self.calls = 0
        self.evaluated = []

    def __call__(self):
        self.calls += 1
        if self.calls == self.fail_at and self.failure == "raises":
            raise _ValidationFailed(f"validation call {self.calls}")
        loss = math.nan if self.calls == self.fail_at else _val_loss(self.model)
        self.evaluated.append((loss, parameters_of(self.model)))
        return loss


def _best_point(evaluated):
    """The first point with the lowest finite loss; ``W_n`` (evaluated first) if none beat it."""
    best_loss, best = evaluated[0]
    for loss, point in evaluated[1:]:
        if math.isfinite(loss) and loss < best_loss:
            best_loss, best = loss, point
    return best


@each_optimizer
@pytest.mark.parametrize("failure", ["raises", "nan"])
@pytest.mark.parametrize("fail_at", [2, 4], ids=["first-move", "later-move"])
def test_failed_validation_leaves_the_best_point_and_training_goes_on(info, failure, fail_at):
    """Call ``fail_at`` of the first stage fails; call 2 is the first move past ``W_n``.

    The parameters are left bitwise at the best point evaluated before it (``W_n`` for a raise
    on the first move), the exception propagates, and training continues as the reference's.
    """
    runs = []
    for kind in (paper_fast_forward, ReferenceFastForward):
        model = _model()
        validation = _FailingValidation(model, fail_at, failure)
        run = kind(
            info.build(model), model, validation, INTERVAL, patience=None, min_improvement=0.0
        )
        _train(info, model, run, INTERVAL - 1)
        if failure == "raises":
            with pytest.raises(_ValidationFailed):
                _train_step(info, model, run)  # step INTERVAL, then the first stage
        else:
            _train_step(info, model, run)
        assert validation.calls >= fail_at  # the failure came in the first stage
        runs.append((model, run, validation))

    (model, ff, validation), (reference_model, reference, _) = runs
    best = _best_point(validation.evaluated)
    assert all_bitwise_equal(parameters_of(model), best)
    if failure == "raises" and fail_at == 2:
        assert len(validation.evaluated) == 1  # W_n alone
    assert model.training
    assert all_bitwise_equal(parameters_of(model), parameters_of(reference_model))
    _assert_same_optimizer_state(ff, reference.optimizer)

    for n in range(INTERVAL + 1, STEPS + 1):
        _train_step(info, model, ff)
        _train_step(info, reference_model, reference)
        assert all_bitwise_equal(parameters_of(model), parameters_of(reference_model)), n
    assert without_timings(ff.stats) == without_timings(reference.stats)
    assert ff.stats.stages == STEPS // INTERVAL - (failure == "raises")  # the raise: no record
