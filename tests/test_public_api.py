import dataclasses
import inspect

import pytest
import torch

import fastforward
import fastforward.functional
from fastforward._config import Config


def test_public_names_are_pinned():
    assert sorted(fastforward.__all__) == [
        "FastForward",
        "FastForwardStats",
        "SEARCH_STRATEGIES",
        "StageRecord",
        "StageResult",
        "fast_forward_stage",
        "validation_closure",
    ]


def test_functional_names_are_pinned():
    assert sorted(fastforward.functional.__all__) == [
        "Ray",
        "SEARCH_STRATEGIES",
        "SearchStrategy",
        "StageResult",
        "doubling_search",
        "fast_forward_stage",
        "linear_search",
        "parabolic_search",
        "warm_start_search",
    ]


def test_every_public_callable_is_documented():
    for name in fastforward.__all__:
        obj = getattr(fastforward, name)
        if callable(obj):
            assert obj.__doc__, name


def test_search_strategies_are_the_documented_ones():
    assert fastforward.SEARCH_STRATEGIES == ("linear", "doubling", "parabolic", "warm_start")


def test_the_wrapper_and_the_functional_stage_share_the_default_search():
    wrapper = inspect.signature(fastforward.FastForward).parameters["search"].default
    functional = inspect.signature(fastforward.fast_forward_stage).parameters["search"].default
    assert wrapper == functional == "parabolic"


def test_the_wrapper_signature_and_its_config_hold_the_same_hyperparameters_and_defaults():
    wrapper = inspect.signature(fastforward.FastForward).parameters
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    defaults = {name: wrapper[name].default for name in fields}
    # The one default resolved at construction: on, unless val_closure rotates its data.
    assert (defaults.pop("cost_aware"), fields.pop("cost_aware")) == (None, True)
    assert defaults == fields


def test_the_default_policy_is_delta_over_the_interval_and_cost_aware_unless_data_rotates():
    model = torch.nn.Linear(3, 1)
    pool = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(4)]

    def mse(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def wrap(closure, **options):
        adam = torch.optim.Adam(model.parameters())
        return fastforward.FastForward(adam, model, closure, **options)

    fixed = wrap(fastforward.validation_closure(model, pool, mse))
    assert (fixed.delta_span, fixed.cost_aware, fixed.cost_ratio) == ("interval", True, None)
    rotating = fastforward.validation_closure(model, pool, mse, rotate=2)
    assert wrap(rotating).cost_aware is False
    assert wrap(lambda stage: 0.0).cost_aware is False  # takes `stage`: may rotate
    assert wrap(rotating, cost_aware=False).cost_aware is False
    paper = wrap(fixed.val_closure, delta_span="step", cost_aware=False)
    assert (paper.delta_span, paper.cost_aware) == ("step", False)


def test_hyperparameters_are_read_only_attributes_of_the_config():
    model = torch.nn.Linear(2, 1)
    ff = fastforward.FastForward(torch.optim.SGD(model.parameters(), lr=0.1), model, lambda: 0.0)
    assert (ff.interval, ff.search) == (ff.config.interval, ff.config.search) == (6, "parabolic")
    with pytest.raises(AttributeError):
        ff.interval = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        ff.config.interval = 3


def test_shared_argument_descriptions_are_written_once_into_both_docstrings():
    wrapper = inspect.getdoc(fastforward.FastForward) or ""
    functional = inspect.getdoc(fastforward.fast_forward_stage) or ""
    for name in ("search", "max_tau", "min_improvement", "foreach"):
        described = [
            line for line in functional.splitlines() if line.lstrip().startswith(f"{name}: ")
        ]
        assert len(described) == 1, name
        assert described[0].strip() in wrapper
        assert "{shared}" not in described[0]
    assert "{shared}" not in wrapper + functional
