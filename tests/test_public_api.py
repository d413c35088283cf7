import fastforward


def test_public_names_are_pinned():
    assert sorted(fastforward.__all__) == [
        "FastForward",
        "FastForwardStats",
        "StageRecord",
        "validation_closure",
    ]


def test_every_public_name_is_documented():
    for name in fastforward.__all__:
        assert getattr(fastforward, name).__doc__, name
