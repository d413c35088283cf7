"""The API reference is generated from the docstrings, covers every public name, and renders."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import fastforward
import fastforward.functional

DOCS = Path(__file__).resolve().parent.parent / "docs"
PUBLIC = {
    f"{module.__name__}.{name}": getattr(module, name)
    for module in (fastforward, fastforward.functional)
    for name in module.__all__
}


@functools.cache
def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page() -> str:
    return (DOCS / "api.md").read_text()


def _prose(page: str) -> str:
    """The page without its fenced code and ``$$`` math blocks."""
    blocks = r"^[ >]*```.*?^[ >]*```$|^[ >]*\$\$$.*?^[ >]*\$\$$"
    return re.sub(blocks, "", page, flags=re.MULTILINE | re.DOTALL)


def _raw_rest(page: str) -> list[str]:
    """Lines that still show reST: a role, a directive or a ``double backtick`` span."""
    raw = re.compile(r":(class|func|meth|attr|data|exc|obj|mod|math):`|\.\. [\w-]+::|``")
    return [line for line in _prose(page).splitlines() if raw.search(line)]


def _anchors(page: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, ' ' -> '-'."""
    headings = re.findall(r"^#+ (.+)$", _prose(page), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_api_reference_is_up_to_date():
    assert _page() == _generator().render(), "run python docs/gen_api.py"


def test_every_public_name_has_a_section():
    page = _page()
    for name in fastforward.__all__:
        assert f"## `fastforward.{name}`" in page, name
    for name in fastforward.functional.__all__:
        sections = (f"## `fastforward.{name}`", f"## `fastforward.functional.{name}`")
        assert any(section in page for section in sections), name


def test_no_rest_is_left_on_the_page():
    assert _raw_rest(_page()) == []


def test_every_link_lands_on_a_heading_of_the_page():
    page = _page()
    links = re.findall(r"\]\(#([^)]*)\)", _prose(page))
    assert len(links) > len(PUBLIC), "the roles and the contents should link to the sections"
    assert sorted(set(links) - _anchors(page)) == []


def test_constants_show_their_own_docstring_not_their_type_s():
    page = _page()
    constants = {q: obj for q, obj in PUBLIC.items() if not callable(obj)}
    assert constants, "SEARCH_STRATEGIES at least"
    for qualified, obj in constants.items():
        type_doc = inspect.getdoc(type(obj)).splitlines()[0]  # "Built-in immutable sequence."
        assert type_doc not in page, qualified


SYNTHETIC = r"""Summary with ``code``, :class:`~fastforward.FastForward` and :func:`torch.stack`.

.. math::

    x = \tau^*

Inline :math:`\tau`; see :meth:`FastForward.step`.

Args:
    alpha: First line
        continued.
    beta (int): A list:

        - one
        - two
          more

Returns:
    Something.

Example:
    >>> 1 + 1  # doctest: +SKIP
    2

.. note::
    Keep ``it``.
"""
SYNTHETIC_MARKDOWN = r"""Summary with `code`, [`FastForward`](#ff) and `torch.stack`.

```math
x = \tau^*
```

Inline $\tau$; see [`FastForward.step`](#ff-step).

**Args:**

- `alpha`: First line
  continued.
- `beta` (`int`): A list:

  - one
  - two
    more

**Returns:** Something.

**Example:**

```python
>>> 1 + 1
2
```

> **Note:** Keep `it`."""


def test_rest_becomes_markdown():
    targets = {"fastforward.FastForward": "ff", "fastforward.FastForward.step": "ff-step"}
    converted = _generator().markdown(SYNTHETIC, "fastforward.thing", targets)
    assert converted == SYNTHETIC_MARKDOWN
    assert _raw_rest(SYNTHETIC) != []  # the check sees what the conversion removed
    assert _raw_rest(converted) == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param("See :ref:`intro`.", "unknown role", id="role"),
        pytest.param("Text.\n\n.. seealso:: Ray", "unknown directive", id="directive"),
        pytest.param("Text.\n\n.. _target:", "unknown reST markup", id="target"),
        pytest.param("Text.\n\n.. math::\n    :label: e\n\n    x", "unsupported opt", id="option"),
        pytest.param("Text.\n\nArg:\n    x: y", "unexpected indentation", id="misspelt-section"),
        pytest.param("Text.\n\nArgs:\n    no colon here", "expected 'name: desc", id="arg"),
        pytest.param("An ``unclosed literal.", "reST left", id="leftover"),
        pytest.param("See :meth:`f`.", "could mean", id="ambiguous-target"),
    ],
)
def test_unknown_markup_fails_naming_the_docstring(doc, message):
    targets = {"pkg.A.f": "pkgaf", "pkg.B.f": "pkgbf"}
    with pytest.raises(ValueError, match=rf"^pkg\.thing: .*{re.escape(message)}"):
        _generator().markdown(doc, "pkg.thing", targets)


def test_a_constant_s_docstring_is_the_literal_after_it(tmp_path, monkeypatch):
    (tmp_path / "ff_doc_constants.py").write_text('PAIR = (1, 2)\n"""The pair."""\nBARE = (3,)\n')
    monkeypatch.syspath_prepend(tmp_path)
    gen = _generator()
    assert gen.docstring("ff_doc_constants", "PAIR", (1, 2)) == "The pair."
    with pytest.raises(ValueError, match=r"ff_doc_constants\.BARE has no docstring"):
        gen.docstring("ff_doc_constants", "BARE", (3,))


def test_every_test_the_guides_cite_exists():
    """``[`test_name`]`` in a guide names the test that pins the claim: it must still exist."""
    tests = Path(__file__).resolve().parent
    defined = set(re.findall(r"^(?:async )?def (test_\w+)", _all_tests(tests), flags=re.M))
    cited = {
        (page.name, name)
        for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
        for name in re.findall(r"\[`(test_\w+)`\]", page.read_text())
    }
    assert len(cited) > 10
    assert {(page, name) for page, name in cited if name not in defined} == set()


def _all_tests(folder: Path) -> str:
    return "\n".join(path.read_text() for path in folder.glob("test_*.py"))
