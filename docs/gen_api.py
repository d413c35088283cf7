"""Write docs/api.md from the docstrings of the public API: ``python docs/gen_api.py``.

``tests/test_docs.py`` fails when docs/api.md is stale or a public name has no docstring.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
from pathlib import Path

import fastforward

API_MD = Path(__file__).resolve().parent / "api.md"
EXTRA_MODULES = {  # names outside fastforward.__all__: search strategies, optional dependencies
    "fastforward.functional": [
        "Ray",
        "SearchStrategy",
        "linear_search",
        "doubling_search",
        "parabolic_search",
        "warm_start_search",
    ],
    "fastforward.hf": ["FastForwardCallback"],
    "fastforward.dcp": ["WrapperState"],
}


_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^( *)\.\. (note|warning)::\s*$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` -> ```C```; without ``~`` the full name."""
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def markdown(doc: str) -> str:
    """Turn the reST of a docstring into Markdown.

    Roles become code, ``.. note::`` / ``.. warning::`` a bold lead-in, a ``.. math::`` block a
    fenced ``math`` block and a ``::`` literal block a fenced ``python`` block.
    """
    doc = _DIRECTIVE.sub(
        lambda m: f"{m.group(1)}**{m.group(2).capitalize()}.**", _ROLE.sub(_role, doc)
    )
    lines, out, i = doc.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        i += 1
        math = line.strip() == ".. math::"
        if not math and not (line.rstrip().endswith("::") and not line.lstrip().startswith("..")):
            out.append(line)
            continue
        if not math:
            out.append(line.rstrip()[:-1])  # "Usage::" reads "Usage:"
        indent = len(line) - len(line.lstrip())
        block = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            block.append(lines[i])
            i += 1
        code = [b for b in block if b.strip()]
        depth = min(_indent(b) for b in code)
        trimmed = "\n".join(b[depth:] for b in block).strip("\n")
        out += ["", "```math" if math else "```python", trimmed, "```", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _constant_doc(module: object, name: str) -> str | None:
    """The string literal right after ``name = ...`` in a module's source (Sphinx style)."""
    body = ast.parse(inspect.getsource(module)).body  # type: ignore[arg-type]
    for node, following in itertools.pairwise(body):
        targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
        named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
        if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            return inspect.cleandoc(str(following.value.value))
    return None


def _section(qualified: str, obj: object) -> str:
    module_name, _, name = qualified.rpartition(".")
    if callable(obj):
        doc = inspect.getdoc(obj)
    else:  # a constant: the docstring written under its definition, not its type's
        modules = dict.fromkeys([module_name, "fastforward.functional"])
        docs = (_constant_doc(importlib.import_module(m), name) for m in modules)
        doc = next((d for d in docs if d), None)
    if not doc:
        raise ValueError(f"{qualified} has no docstring")
    signature = ""
    if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):  # a callback protocol
        signature = str(inspect.signature(obj.__call__)).replace("(self, ", "(", 1)
    elif callable(obj):
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = ""
    parts = [
        f"## `{qualified}`\n",
        f"```python\n{qualified}{signature}\n```\n",
        markdown(doc) + "\n",
    ]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            member_doc = inspect.getdoc(member)
            if member_doc:
                parts.append(f"### `{qualified}.{name}`\n\n{markdown(member_doc)}\n")
    return "\n".join(parts)


def render() -> str:
    """The whole of docs/api.md."""
    sections = [
        _section(f"fastforward.{name}", getattr(fastforward, name)) for name in fastforward.__all__
    ]
    for module_name, names in EXTRA_MODULES.items():
        module = __import__(module_name, fromlist=names)
        sections += [_section(f"{module_name}.{name}", getattr(module, name)) for name in names]
    header = (
        "# API reference\n\n"
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit.\n"
    )
    return header + "\n" + "\n".join(sections)


if __name__ == "__main__":
    API_MD.write_text(render())
    print(f"wrote {API_MD}")
