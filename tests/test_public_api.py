import fastforward


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


def test_every_public_callable_is_documented():
    for name in fastforward.__all__:
        obj = getattr(fastforward, name)
        if callable(obj):
            assert obj.__doc__, name


def test_search_strategies_are_the_documented_ones():
    assert fastforward.SEARCH_STRATEGIES == ("linear", "doubling", "parabolic", "warm_start")
