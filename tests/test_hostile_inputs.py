"""Odd setups and misuse: the documented behaviour or a clear error, never a silent one."""

from __future__ import annotations

import copy
import enum
import gc
import warnings

import numpy as np
import pytest
import torch
from reference import bitwise_equal, paper_fast_forward
from strategies import Quadratic, fixed_quadratic, through_disk, train

from fastforward import FastForward, fast_forward_stage, validation_closure

INTERVAL = 3


class _Recorder:
    """A validation closure: the model's loss, recording ``tensors`` at every evaluation."""

    def __init__(self, model, *tensors):
        self.model, self.tensors, self.points = model, tensors, []

    def __call__(self):
        self.points.append([t.detach().clone() for t in self.tensors])
        return float(self.model())


def _quadratic_run(optimizer_factory, **options):
    model = Quadratic(fixed_quadratic())
    recorder = _Recorder(model, model.x)
    ff = paper_fast_forward(optimizer_factory(model), model, recorder, INTERVAL, **options)
    return model, ff, recorder


def _w_before_the_stage_step(model, ff):
    """Train to just before the step a stage follows; return ``W_{n-1}``."""
    train(model, ff, INTERVAL - 1)
    return model.x.detach().clone()


def _assert_landed_on_one_tau_step(model, ff, recorder, w_before):
    """The stage left ``x`` at ``W_n + τΔ`` with the recorded τ, ``Δ`` the real last update."""
    (record,) = ff.stats.history
    (w_n,) = recorder.points[0]
    assert record.tau > 1
    delta = w_n - w_before
    assert bitwise_equal(model.x.detach(), w_n.clone().add_(delta, alpha=record.tau))


# 1. A tensor listed twice moves once.


def test_a_tensor_listed_twice_in_the_optimizer_moves_once():
    def sgd_listing_x_twice(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns about the duplicate
            return torch.optim.SGD([model.x, model.x], lr=0.01)

    model, ff, recorder = _quadratic_run(sgd_listing_x_twice, patience=None)
    w_before = _w_before_the_stage_step(model, ff)
    train(model, ff, 1)
    _assert_landed_on_one_tau_step(model, ff, recorder, w_before)


def test_tied_weights_listed_once_per_module_move_once():
    shared = torch.nn.Parameter(torch.tensor([[2.0, -1.0]]))
    first, second = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    first.weight = second.weight = shared
    model = torch.nn.Sequential(first, second)
    x = torch.tensor([[1.0, 0.5], [0.3, -0.2]])
    loss = lambda: float((first(x) - 3.0).pow(2).mean())  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgd = torch.optim.SGD([m.weight for m in (first, second)], lr=1e-3)
    points = []
    ff = paper_fast_forward(sgd, model, lambda: points.append(shared.detach().clone()) or loss(), 2)
    ff.zero_grad()
    (first(x) - 3.0).pow(2).mean().backward()
    ff.step()
    w_before = shared.detach().clone()
    ff.zero_grad()
    (first(x) - 3.0).pow(2).mean().backward()
    ff.step()
    (record,) = ff.stats.history
    assert record.tau > 1
    delta = points[0] - w_before
    assert bitwise_equal(shared.detach(), points[0].clone().add_(delta, alpha=record.tau))


def test_functional_stage_moves_a_tensor_listed_twice_once():
    w = torch.zeros(3)
    result = fast_forward_stage(
        [w, w], [torch.ones(3), torch.full((3,), 5.0)], lambda: float((w - 7.2).pow(2).sum())
    )
    assert result.tau == 7
    assert torch.equal(w, torch.full((3,), 7.0))  # the first entry's delta, applied once


# 2. The wrapped optimizer's own load_state_dict.


def test_the_wrapper_reads_the_wrapped_optimizers_containers_after_it_reloads():
    model = Quadratic(fixed_quadratic())
    other = torch.nn.Parameter(torch.ones(2))
    adam = torch.optim.Adam([model.x], lr=0.02)
    ff = paper_fast_forward(adam, model, lambda: float(model()), INTERVAL)
    train(model, ff, 2)
    adam.load_state_dict(adam.state_dict())  # replaces adam's containers with new objects
    assert ff.param_groups is adam.param_groups
    assert ff.state is adam.state
    for group in ff.param_groups:  # what a scheduler on the wrapper does
        group["lr"] = 0.5
    assert adam.param_groups[0]["lr"] == 0.5
    adam.add_param_group({"params": [other], "lr": 0.1})
    assert ff.param_groups[-1]["params"] == [other]


def test_a_group_added_to_the_wrapped_optimizer_after_it_reloads_is_extrapolated():
    model = torch.nn.Linear(2, 1)
    x, y = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([[3.0], [1.0]])
    loss = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    adam = torch.optim.Adam([model.weight], lr=1e-3)
    ff = paper_fast_forward(
        adam, model, lambda: float(loss()), 2, patience=None, min_improvement=0.0
    )
    adam.load_state_dict(adam.state_dict())
    adam.add_param_group({"params": [model.bias]})
    bias_points = []
    ff.val_closure = lambda: bias_points.append(model.bias.detach().clone()) or float(loss())
    for _ in range(2):
        loss().backward()
        ff.step()
        ff.zero_grad()
    (record,) = ff.stats.history
    assert record.tau > 0
    assert not torch.equal(model.bias.detach(), bias_points[0])  # moved by the stage


# 3. Deep copies.


def _linear_run():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = (torch.randn(16, 3), torch.randn(16, 1))
    mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    ff = paper_fast_forward(adam, model, validation_closure(model, [batch], mse), 2, patience=None)
    return model, ff, batch, mse


def _steps(model, ff, batch, mse, n):
    for _ in range(n):
        mse(model, batch).backward()
        ff.step()
        ff.zero_grad()


def test_a_deep_copy_with_a_validation_closure_evaluates_the_copied_model():
    model, ff, batch, mse = _linear_run()
    _steps(model, ff, batch, mse, 2)
    original = [p.detach().clone() for p in model.parameters()]
    model_copy, ff_copy = copy.deepcopy((model, ff))
    _steps(model_copy, ff_copy, batch, mse, 4)
    assert all(
        bitwise_equal(a, p.detach()) for a, p in zip(original, model.parameters(), strict=True)
    )
    reference, ff_reference, _, _ = _linear_run()
    _steps(reference, ff_reference, batch, mse, 6)
    assert [r.tau for r in ff_copy.stats.history] == [r.tau for r in ff_reference.stats.history]
    assert all(
        bitwise_equal(a.detach(), b.detach())
        for a, b in zip(model_copy.parameters(), reference.parameters(), strict=True)
    )
    assert ff_copy.stats.simulated_steps > 0


# 4. Re-entrancy.


@pytest.mark.parametrize("inner", ["wrapper", "wrapped"])
def test_stepping_from_inside_a_stage_is_refused_and_the_stage_rolls_back(inner):
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    calls = []

    def meddling_closure():
        calls.append(model.x.detach().clone())
        if len(calls) == 2:
            (ff if inner == "wrapper" else adam).step()
        return float(model())

    ff = paper_fast_forward(adam, model, meddling_closure, INTERVAL)
    train(model, ff, INTERVAL - 1)
    model().backward()
    with pytest.raises(RuntimeError, match="during a Fast Forward stage"):
        ff.step()
    assert bitwise_equal(model.x.detach(), calls[0])  # W_n: nothing beat it yet


# 5. A module as the validation closure.


def test_a_module_whose_forward_takes_stage_is_given_the_stage_index():
    class RotatingLoss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.target = model
            self.stages = []

        def forward(self, stage=0):
            self.stages.append(stage)
            return self.target()

    model = Quadratic(fixed_quadratic())
    closure = RotatingLoss(model)
    ff = paper_fast_forward(torch.optim.Adam([model.x], lr=0.02), model, closure, 2, patience=None)
    train(model, ff, 6)
    assert ff.stats.stages == 3
    assert sorted(set(closure.stages)) == [0, 1, 2]


# 6. Hyperparameters of numpy and enum types.


class _Search(str, enum.Enum):
    LINEAR = "linear"


def test_numpy_and_enum_hyperparameters_are_stored_as_plain_python_values():
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(
        torch.optim.Adam([model.x], lr=0.02),
        model,
        lambda: float(model()),
        np.int64(2),
        warmup=np.int32(1),
        max_tau=np.int64(40),
        max_tau_ratio=np.float64(4),
        adaptive_interval=(np.int64(2), np.int64(8)),
        patience=np.int64(3),
        search=_Search.LINEAR,
        min_improvement=np.float32(1e-3),
        enabled=np.bool_(True),
    )
    assert [type(v) for v in (ff.interval, ff.warmup, ff.max_tau, ff.patience)] == [int] * 4
    assert type(ff.max_tau_ratio) is float
    assert type(ff.min_improvement) is float
    assert ff.adaptive_interval == (2, 8)
    assert type(ff.adaptive_interval[0]) is int
    assert type(ff.search) is str
    assert ff.search == "linear"
    assert ff.enabled is True
    train(model, ff, 5)
    loaded = through_disk(ff.state_dict())  # torch.load(weights_only=True)
    fresh_model = Quadratic(fixed_quadratic())
    fresh = paper_fast_forward(torch.optim.Adam([fresh_model.x], lr=0.02), fresh_model, lambda: 0.0)
    fresh.load_state_dict(loaded)
    assert fresh.stats == ff.stats
    assert fresh.search == "linear"
    assert fresh.adaptive_interval == (2, 8)


@pytest.mark.parametrize("value", ["False", 0, None])
def test_enabled_must_be_a_bool(value):
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(torch.optim.Adam([model.x]), model, lambda: 0.0)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        ff.enabled = value
    assert ff.enabled is True


# 8. Buffers are freed when stages are off for good or for now.


def _live_tensors_shaped(shape):
    gc.collect()
    objects = gc.get_objects()
    return sum(issubclass(type(o), torch.Tensor) and o.shape == shape for o in objects)


def _odd_shaped_run(**options):
    torch.manual_seed(0)
    model = torch.nn.Linear(13, 7, bias=False)  # a (7, 13) weight: easy to count
    x = torch.randn(32, 13, generator=torch.Generator().manual_seed(0))
    loss = lambda: model(x).pow(2).mean()  # noqa: E731
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)  # stateless: only W and the buffers
    ff = paper_fast_forward(sgd, model, loss, 2, **options)
    for _ in range(2):
        loss().backward()
        ff.step()
        ff.zero_grad()
    return model, ff, loss


def test_loading_a_given_up_checkpoint_frees_the_stage_buffers():
    _, given_up, _ = _odd_shaped_run(patience=1, min_improvement=0.99)
    assert not given_up.active
    saved = through_disk(given_up.state_dict())  # tensors of its own, not given_up's
    _, ff, _ = _odd_shaped_run(patience=None)
    assert ff.stats.stages == 1
    held = _live_tensors_shaped((7, 13))
    ff.load_state_dict(saved)
    assert not ff.active
    assert _live_tensors_shaped((7, 13)) == held - 2  # W_n and Δ are gone


def test_disabling_frees_the_stage_buffers():
    _, ff, _ = _odd_shaped_run(patience=None)
    held = _live_tensors_shaped((7, 13))
    ff.enabled = False
    assert _live_tensors_shaped((7, 13)) == held - 2


# 9. Malformed wrapper entries.


@pytest.mark.parametrize(
    ("corrupt", "field"),
    [
        (lambda e: e["stats"].update(stages=None), "stats.stages"),
        (lambda e: e["stats"].update(optimizer_steps=4.5), "stats.optimizer_steps"),
        (lambda e: e["stats"].update(gave_up_at_step="3"), "stats.gave_up_at_step"),
        (lambda e: e["stats"]["history"][0].update(tau="1"), r"stats.history\[0\].tau"),
        (lambda e: e["stats"]["history"][0].update(loss_after=None), "loss_after"),
        (lambda e: e["stats"].update(history={}), "stats.history must be a list"),
        (lambda e: e.update(enabled="False"), "enabled must be a bool"),
        (lambda e: e.update(failed_stages_in_a_row=-1), "failed_stages_in_a_row must be >= 0"),
        (lambda e: e.update(last_tau=2.0), "last_tau must be an int"),
        (lambda e: e["hyperparameters"].update(interval=np.int64(3).item() + 0.5), "interval"),
        (lambda e: e.update(peak_pace=10**400), "peak_pace must be a finite number"),
        (lambda e: e.update(training_clock=[10**400, 2]), "training_clock seconds must be"),
        (lambda e: e.update(reference=[2, "4.0"]), "reference loss must be a number"),
    ],
)
def test_a_malformed_wrapper_entry_is_refused_naming_the_field_and_changes_nothing(corrupt, field):
    model, ff, _ = _quadratic_run(lambda m: torch.optim.Adam([m.x], lr=0.02))
    train(model, ff, 4)
    saved = ff.state_dict()
    corrupt(saved["fastforward"])
    _, fresh, _ = _quadratic_run(lambda m: torch.optim.Adam([m.x], lr=0.02))
    before, before_state = repr(fresh), fresh.state_dict()
    with pytest.raises(ValueError, match=field):
        fresh.load_state_dict(saved)
    assert repr(fresh) == before
    assert fresh.state_dict() == before_state


@pytest.mark.parametrize("entry", [5, None, ["stats"]])
def test_a_wrapper_entry_that_is_not_a_dict_is_a_value_error(entry):
    model, ff, _ = _quadratic_run(lambda m: torch.optim.Adam([m.x], lr=0.02))
    train(model, ff, 2)
    saved = ff.state_dict()
    saved["fastforward"] = entry
    if entry is None:  # None means "no entry": a bare optimizer's dict; the counters stay
        steps = ff.stats.optimizer_steps
        ff.load_state_dict(saved)
        assert ff.stats.optimizer_steps == steps == 2
        return
    with pytest.raises(ValueError, match="entry of the state_dict must be a dict"):
        ff.load_state_dict(saved)


# 10. Everything frozen mid-run.


def test_freezing_every_tensor_mid_run_skips_the_stage_and_steps_like_the_bare_optimizer():
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(torch.optim.Adam([model.x], lr=0.02), model, lambda: float(model()), 2)
    train(model, ff, 2)
    model.x.requires_grad_(False)
    frozen_at = model.x.detach().clone()
    for _ in range(4):
        ff.step()
    assert ff.stats.optimizer_steps == 6
    assert ff.stats.stages == 1
    assert ff.stats.skipped_stages == 2
    assert bitwise_equal(model.x.detach(), frozen_at)


# 11. Mistakes caught at construction, or at once.


def test_a_closure_that_needs_an_argument_is_refused_at_construction():
    model = Quadratic(fixed_quadratic())
    with pytest.raises(TypeError, match=r"val_closure is called with no arguments.*\['batch'\]"):
        paper_fast_forward(torch.optim.Adam([model.x]), model, lambda batch: float(model()))


def test_leaving_out_the_model_names_the_signature():
    model = Quadratic(fixed_quadratic())
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module.*model left out"):
        paper_fast_forward(torch.optim.Adam([model.x]), lambda: float(model()))
    with pytest.raises(TypeError, match="val_closure is required"):
        paper_fast_forward(torch.optim.Adam([model.x]), model)


def test_an_optimizer_built_on_a_copy_of_the_model_is_refused_at_construction():
    model = Quadratic(fixed_quadratic())
    other = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="not on a copy"):
        paper_fast_forward(torch.optim.Adam([other.x]), model, lambda: float(model()))


def test_a_second_wrapper_replaces_a_live_one_whose_step_then_raises():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    first = paper_fast_forward(adam, model, lambda: float(model()), 2, patience=None)
    train(model, first, 3)
    with pytest.warns(UserWarning, match="already wrapped by another FastForward"):
        # a notebook cell run again: `first` is still alive while the new one is built
        second = paper_fast_forward(adam, model, lambda: float(model()), 2, patience=None)
    at = model.x.detach().clone()
    for call in (first.step, lambda: first.add_param_group({"params": []}),
                 lambda: first.load_state_dict(second.state_dict())):  # fmt: skip
        with pytest.raises(RuntimeError, match="a newer FastForward of the same optimizer"):
            call()
    assert bitwise_equal(model.x.detach(), at)
    assert len(adam.param_groups) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the new wrapper steps it: no direct-step warning
        train(model, second, 4)
    assert (second.stats.optimizer_steps, second.stats.stages) == (4, 2)
    assert first.stats.optimizer_steps == 3


def test_a_copy_of_a_replaced_wrapper_stays_replaced_and_leaves_the_new_one_alone():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    first = paper_fast_forward(adam, model, lambda: float(model()), 2)
    with pytest.warns(UserWarning, match="already wrapped"):
        second = paper_fast_forward(adam, model, lambda: float(model()), 2)
    shallow, deep = copy.copy(first), copy.deepcopy(first)
    for replaced in (shallow, deep):
        with pytest.raises(RuntimeError, match="a newer FastForward"):
            replaced.step()
    train(model, second, 2)  # the live wrapper is not refused because of the copies
    assert second.stats.stages == 1


def test_a_wrapper_built_while_a_failed_one_holds_the_optimizer_replaces_nothing():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x])
    first = paper_fast_forward(adam, model, lambda: float(model()))
    with pytest.raises(ValueError, match="interval"):
        paper_fast_forward(adam, model, lambda: float(model()), interval=0)
    train(model, first, 1)  # the invalid one took nothing over
    assert first.stats.optimizer_steps == 1
    del first
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped wrapper is replaced silently
        second = paper_fast_forward(adam, model, lambda: float(model()))
    assert second.optimizer is adam


def test_stepping_the_wrapped_optimizer_directly_warns_once():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    ff = paper_fast_forward(adam, model, lambda: float(model()), 2)
    with pytest.warns(UserWarning, match="call step\\(\\) on the FastForward wrapper"):
        train(model, adam, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, adam, 1)  # once only
        train(model, ff, 2)  # through the wrapper: no warning
    assert ff.stats.optimizer_steps == 2


# 12. The functional API.


@pytest.mark.parametrize("search", ["linear", "doubling", "parabolic", "warm_start"])
def test_functional_stage_takes_a_tensor_loss_and_returns_floats(search):
    w = torch.zeros(1)
    result = fast_forward_stage(
        [w], [torch.ones(1)], lambda: (w - 30.2).pow(2).sum(), search=search
    )
    assert result.tau == 30
    assert type(result.loss_before) is float
    assert type(result.loss_after) is float


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"params": []}, ValueError, "params is empty"),
        ({"delta": []}, ValueError, "delta has 0 tensors for 1 params"),
        ({"delta": [torch.ones(2)]}, ValueError, r"delta\[0\] is \(2,\)"),
        ({"params": torch.zeros(1)}, TypeError, "params must be a list of tensors"),
        ({"max_tau": 2**64}, ValueError, "max_tau must be <= 9007199254740992"),
    ],
)
def test_functional_stage_rejects_bad_arguments_naming_them(arguments, error, message):
    kwargs = {"params": [torch.zeros(1)], "delta": [torch.ones(1)], "loss": lambda: 0.0}
    kwargs.update(arguments)
    with pytest.raises(error, match=message):
        fast_forward_stage(**kwargs)


@pytest.mark.parametrize("tau", [torch.tensor(True), np.bool_(True), True])
def test_a_boolean_tau_is_refused(tau):
    w = torch.zeros(1)
    with pytest.raises(TypeError, match="tau must be an int"):
        fast_forward_stage(
            [w], [torch.ones(1)], lambda: float(w.sum()), search=lambda ray, m, s: ray.evaluate(tau)
        )
    assert torch.equal(w, torch.zeros(1))


def test_a_ray_kept_by_a_strategy_cannot_move_the_parameters_after_its_stage():
    kept = []

    def keeping(ray, max_tau, start):
        kept.append(ray)
        ray.evaluate(3)

    w = torch.zeros(1)
    result = fast_forward_stage([w], [torch.ones(1)], lambda: float((w - 3).pow(2)), search=keeping)
    assert result.tau == 3
    with pytest.raises(RuntimeError, match="stage has ended"):
        kept[0].evaluate(1)
    assert torch.equal(w, torch.full((1,), 3.0))


# 13. Helpers.


@pytest.mark.parametrize(
    ("rotate", "error"), [(1.5, TypeError), ("2", TypeError), (True, TypeError), (-1, ValueError)]
)
def test_validation_closure_rotate_errors_name_rotate(rotate, error):
    batches = [torch.ones(2, 3)] * 4
    with pytest.raises(error, match="rotate must be"):
        validation_closure(torch.nn.Linear(3, 1), batches, lambda m, b: m(b).sum(), rotate=rotate)


@pytest.mark.parametrize("single", [{"input_ids": torch.ones(2, 3)}, torch.ones(2, 3)])
def test_validation_closure_refuses_a_single_batch_not_in_a_list(single):
    with pytest.raises(TypeError, match=r"batches must be a list of batches.*pass \[batch\]"):
        validation_closure(torch.nn.Linear(3, 1), single)


def test_the_trainer_callback_checks_its_argument():
    hf = pytest.importorskip("fastforward.hf")
    with pytest.raises(TypeError, match="FastForwardCallback needs the FastForward wrapper"):
        hf.FastForwardCallback(None)
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(torch.optim.Adam([model.x]), model, lambda: 0.0)

    class Prepared:  # what accelerate.prepare returns: the wrapper as .optimizer
        optimizer = ff

    assert hf.FastForwardCallback(Prepared()).ff is ff


@pytest.mark.parametrize(
    ("span", "between_steps"),
    [("step", [0, 0, 0, 0, 0, 0]), ("interval", [1, 1, 0, 1, 1, 0])],  # after steps 1..6
)
def test_keep_buffers_false_holds_one_copy_through_an_interval_and_two_only_in_stages(
    span, between_steps
):
    torch.manual_seed(0)
    model = torch.nn.Linear(13, 7, bias=False)  # a (7, 13) weight: easy to count
    x = torch.randn(32, 13, generator=torch.Generator().manual_seed(0))
    loss = lambda: model(x).pow(2).mean()  # noqa: E731
    during_stages = []

    def val_loss():
        during_stages.append(_live_tensors_shaped((7, 13)) - 2)  # less the weight and its grad
        return loss()

    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    ff = paper_fast_forward(sgd, model, val_loss, 3, delta_span=span, keep_buffers=False)
    held = []
    for _ in range(6):
        loss().backward()
        ff.step()
        ff.zero_grad()
        held.append(_live_tensors_shaped((7, 13)) - 1)
    assert held == between_steps
    assert ff.stats.stages == 2
    assert set(during_stages) == {2}


def test_keep_buffers_false_frees_them_after_each_stage_and_changes_no_bit():
    runs = {}
    for keep in (True, False):
        model, ff, loss = _odd_shaped_run(patience=None, keep_buffers=keep)
        for _ in range(4):
            loss().backward()
            ff.step()
            ff.zero_grad()
        runs[keep] = (model.weight.detach().clone(), [r.tau for r in ff.stats.history])
        held = _live_tensors_shaped((7, 13))
        del ff
        assert held - _live_tensors_shaped((7, 13)) == (2 if keep else 0)
    assert runs[True][1] == runs[False][1]
    assert len(runs[True][1]) == 3
    assert bitwise_equal(runs[True][0], runs[False][0])


# 15. Settings a checkpoint brings, and the rules they must still keep.


def _trained_checkpoint(**options):
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    ff = FastForward(adam, model, lambda: float(model()), 2, **options)
    train(model, ff, 5)
    return through_disk(ff.state_dict()), ff


def test_a_checkpoint_s_settings_replace_the_constructor_s_and_a_warning_names_each(caplog):
    saved, ff = _trained_checkpoint(patience=None)
    model = Quadratic(fixed_quadratic())
    other = FastForward(
        torch.optim.Adam([model.x], lr=0.02), model, lambda: float(model()), 3, max_tau=8,
        search="linear", enabled=False,
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="fastforward"):
        other.load_state_dict(saved)
    assert other.config == ff.config
    assert other.enabled is True
    (warning,) = [r.getMessage() for r in caplog.records if "replaces settings" in r.getMessage()]
    for change in ("interval 3 -> 2", "max_tau 8 -> 1000", "search 'linear' -> 'parabolic'",
                   "patience 3 -> None", "enabled False -> True"):  # fmt: skip
        assert change in warning
    assert "warmup" not in warning  # the same on both sides

    caplog.clear()
    same = Quadratic(fixed_quadratic())
    resumed = FastForward(
        torch.optim.Adam([same.x], lr=0.02), same, lambda: float(same()), 2, patience=None
    )
    with caplog.at_level("WARNING", logger="fastforward"):
        resumed.load_state_dict(saved)
    assert not caplog.records


def test_a_cost_aware_checkpoint_is_refused_by_a_wrapper_whose_closure_takes_stage():
    saved, _ = _trained_checkpoint(cost_aware=True, cost_ratio=0.5)
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    rotating = FastForward(adam, model, lambda stage=0: float(model()), 2)
    assert rotating.cost_aware is False  # the constructor's rule: the data may rotate
    before = copy.deepcopy((adam.state_dict(), rotating.wrapper_state_dict()))
    with pytest.raises(ValueError, match=r"saved with cost_aware=True.*takes `stage`"):
        rotating.load_state_dict(saved)
    with pytest.raises(ValueError, match="saved with cost_aware=True"):
        rotating.load_wrapper_state_dict(saved["fastforward"])
    assert (adam.state_dict(), rotating.wrapper_state_dict()) == before  # nothing loaded


# 16. Tensors a stage cannot move, and groups added later.


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: torch.randn(3, 3).to_sparse(), TypeError, "'w' of `model` has layout"),
        (lambda: torch.empty(3, 3, device="meta"), ValueError, "'w' of `model` is on the meta"),
    ],
)
def test_a_tensor_without_dense_data_is_refused_naming_it(make, error, message):
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(make())
    model.v = torch.nn.Parameter(torch.ones(2))
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    with pytest.raises(error, match=message):
        FastForward(sgd([model.w, model.v]), model, lambda: 0.0)
    ff = FastForward(sgd([model.v]), model, lambda: 0.0)
    with pytest.raises(error, match=message):
        ff.add_param_group({"params": [model.w]})
    assert len(ff.param_groups) == 1  # nothing added
    model.w.requires_grad_(False)
    ff.add_param_group({"params": model.w})  # frozen: never moved, so accepted
    model.w.requires_grad_(True)
    model.v.grad = torch.ones(2)
    with pytest.raises(error, match=message):  # before the step: nothing has changed
        ff.step()
    assert torch.equal(model.v.detach(), torch.ones(2))


def test_a_group_of_another_model_s_tensors_is_refused_before_the_optimizer_holds_it():
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    ff = paper_fast_forward(adam, model, lambda: float(model()), 2, patience=None)
    stranger = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(RuntimeError, match="not parameters of `model`"):
        ff.add_param_group({"params": iter([stranger]), "lr": 0.1})
    assert len(adam.param_groups) == 1
    other = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="1 of the new group's 2 trainable tensors"):
        ff.add_param_group({"params": [model.frozen.requires_grad_(True), other.weight]})
    model.frozen.requires_grad_(False)
    if "param_names" in adam.param_groups[0]:  # torch >= 2.6 takes (name, tensor) pairs too
        with pytest.raises(RuntimeError, match="not parameters of `model`"):
            ff.add_param_group({"params": list(other.named_parameters())})
    assert len(adam.param_groups) == 1
    train(model, ff, 4)  # training goes on, with its stages
    assert ff.stats.stages == 2
    group = {"params": iter([model.frozen])}  # an iterator, read once
    ff.add_param_group(group)
    assert adam.param_groups[-1] is group  # the caller's dict, filled in, as torch does
    assert group["params"] == [model.frozen]
    assert group["lr"] == 0.02


@pytest.mark.parametrize(
    "policy",
    [
        {"delta_span": "step", "cost_aware": True, "cost_ratio": 0.5},
        {"delta_span": "interval", "cost_aware": True, "cost_ratio": 0.5},
        {"delta_span": "step", "cost_aware": False},
    ],
)
def test_a_model_frozen_before_its_first_step_steps_like_the_bare_optimizer(policy):
    model = Quadratic(fixed_quadratic())
    adam = torch.optim.Adam([model.x], lr=0.02)
    ff = FastForward(adam, model, lambda: float(model()), 2, **policy)
    start = model.x.detach().clone()
    model.x.requires_grad_(False)  # e.g. adapters held back for a warmup phase
    for _ in range(3):
        ff.step()
    assert bitwise_equal(model.x.detach(), start)
    assert not adam.state
    assert (ff.stats.skipped_stages, ff.stats.evaluations) == (1, 0)
    model.x.requires_grad_(True)
    train(model, ff, 6)
    assert ff.stats.stages >= 1  # once it trains again, judged if cost_aware
    assert (ff.stats.history[0].payoff is not None) == policy["cost_aware"]


# 17. A closure that leaves gradients switched on.


def test_a_closure_that_switches_gradients_on_still_lands_on_the_best_point():
    w = torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.Module()
    model.w = w
    losses = iter([1.0, 0.5, 2.0])  # τ = 0, 1 (the best), 2

    def leaky():
        loss = next(losses)
        if loss == 2.0:
            torch.set_grad_enabled(True)
        return loss

    ff = paper_fast_forward(
        torch.optim.SGD([w], lr=1.0), model, leaky, 1, search="linear", min_improvement=0.0
    )
    w.grad = torch.tensor([-1.0])
    try:
        ff.step()  # W_n = 1, Δ = 1: linear search evaluates τ = 1 and 2, lands on τ = 1
    finally:
        torch.set_grad_enabled(True)
    assert torch.equal(w.detach(), torch.tensor([2.0]))
    assert ff.stats.history[-1].tau == 1


# 18. Arguments of the wrong kind or out of range, whatever their type.


@pytest.mark.parametrize("value", ["no", 1, 0.0])
def test_foreach_must_be_a_bool_or_none(value):
    model = Quadratic(fixed_quadratic())
    with pytest.raises(TypeError, match="foreach must be a bool"):
        FastForward(torch.optim.Adam([model.x]), model, lambda: 0.0, foreach=value)
    with pytest.raises(TypeError, match="foreach must be a bool"):
        fast_forward_stage([torch.zeros(1)], [torch.ones(1)], lambda: 0.0, foreach=value)
    numpy_false = FastForward(torch.optim.Adam([model.x]), model, lambda: 0.0, foreach=np.False_)
    assert numpy_false.foreach is False  # a numpy bool is stored as the plain bool


@pytest.mark.parametrize("argument", ["cost_ratio", "max_tau_ratio", "min_improvement"])
def test_an_int_too_large_for_a_float_is_refused_naming_the_argument(argument):
    model = Quadratic(fixed_quadratic())
    with pytest.raises(ValueError, match=f"{argument} must .*got inf"):
        FastForward(torch.optim.Adam([model.x]), model, lambda: 0.0, **{argument: 10**400})


def test_a_loss_too_large_for_a_float_counts_as_infinite_and_is_never_landed_on():
    w = torch.zeros(1)
    losses = iter([5, 10**400, -(10**400)])
    result = fast_forward_stage(
        [w], [torch.ones(1)], lambda: next(losses), search="linear", max_tau=2
    )
    assert (result.tau, result.loss_before, result.loss_after) == (0, 5.0, 5.0)
    assert torch.equal(w, torch.zeros(1))


@pytest.mark.parametrize("group", ["nonsense", 5, torch.zeros(1)])
def test_process_group_must_be_a_process_group(group):
    model = Quadratic(fixed_quadratic())
    with pytest.raises(TypeError, match=r"process_group must be None .* got"):
        FastForward(torch.optim.Adam([model.x]), model, lambda: 0.0, process_group=group)
    FastForward(torch.optim.Adam([model.x]), model, lambda: 0.0)  # nothing half-registered


@pytest.mark.parametrize(
    ("loss_fn", "error", "message"),
    [
        (lambda model, batch: None, TypeError, "loss_fn must return a Python number"),
        (lambda model, batch: "0.5", TypeError, "loss_fn must return a Python number"),
        (lambda model, batch: model(batch)[:0], ValueError, "loss_fn returned an empty tensor"),
        (lambda model, batch: model(batch) > 0, TypeError, "loss_fn returned a torch.bool"),
    ],
)
def test_validation_closure_names_loss_fn_when_it_returns_no_loss(loss_fn, error, message):
    model = torch.nn.Linear(3, 1)
    closure = validation_closure(model, [torch.ones(4, 3)], loss_fn)
    with pytest.raises(error, match=message):
        closure()


def test_validation_closure_averages_each_batch_s_losses_whatever_their_form():
    model = torch.nn.Linear(3, 1)
    per_example = torch.tensor([[0.5], [1.0], [1.5], [1.0]], dtype=torch.float16)  # mean 1.0
    values = iter([0.25, torch.tensor([0.75]), np.float64(2.0), per_example])
    closure = validation_closure(model, [1, 2, 3, 4], lambda m, b: next(values))
    loss = closure()
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    assert loss.item() == 1.0  # (0.25 + 0.75 + 2.0 + 1.0) / 4, exact in float32


def test_validation_closure_names_the_model_output_when_its_loss_is_no_loss():
    class Output:
        loss = "low"

    class Model(torch.nn.Module):
        def forward(self, batch):
            return Output()

    with pytest.raises(TypeError, match=r"the model's forward \(its output's .loss\) must return"):
        validation_closure(Model(), [1])()
