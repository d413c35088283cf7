"""Write docs/api.md from the docstrings of the public API: ``python docs/gen_api.py``.

``tests/test_docs.py`` fails when docs/api.md is stale or a public name has no docstring.
"""

from __future__ import annotations

import inspect
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


def _section(qualified: str, obj: object) -> str:
    doc = inspect.getdoc(obj)
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
    parts = [f"## `{qualified}`\n", f"```python\n{qualified}{signature}\n```\n", doc + "\n"]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            member_doc = inspect.getdoc(member)
            if member_doc:
                parts.append(f"### `{qualified}.{name}`\n\n{member_doc}\n")
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
