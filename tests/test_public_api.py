import inspect

import fastforward
import fastforward.functional


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
