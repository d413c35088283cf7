"""The API reference is generated from the docstrings and covers every public name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import fastforward
import fastforward.functional

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_up_to_date():
    assert (DOCS / "api.md").read_text() == _generator().render(), "run python docs/gen_api.py"


def test_every_public_name_has_a_section():
    text = (DOCS / "api.md").read_text()
    for name in fastforward.__all__:
        assert f"## `fastforward.{name}`" in text, name
    for name in fastforward.functional.__all__:
        sections = (f"## `fastforward.{name}`", f"## `fastforward.functional.{name}`")
        assert any(section in text for section in sections), name
