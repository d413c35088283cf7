"""Write docs/api.md from the docstrings of the public API: ``python docs/gen_api.py``.

The public API is the ``__all__`` of each module in ``MODULES`` (a module without one: the public
classes and functions it defines). Docstrings are Google style with reST roles and directives;
``markdown`` turns them into GitHub Markdown and raises, naming the docstring, on any markup it
does not know, so that nothing reaches the page as raw reST. ``tests/test_docs.py`` fails when
docs/api.md is stale.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
MODULES = (  # in page order; a name exported by two of them is documented once, under the first
    "fastforward",
    "fastforward.functional",
    "fastforward.validation",
    "fastforward.hf",  # needs transformers
    "fastforward.dcp",
)
LINK_ROLES = {"class", "func", "meth", "attr", "data", "const", "exc", "obj", "mod"}
ADMONITIONS = {"note": "Note", "warning": "Warning"}  # as directives, or as Google sections
ENTRY_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args", "Attributes", "Raises"}
TEXT_SECTIONS = {"Returns", "Yields", "Example", "Examples", "References", "See Also"}
SECTIONS = ENTRY_SECTIONS | TEXT_SECTIONS | {"Note", "Notes", "Warning", "Warnings"}

_INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|:(?P<role>[\w:-]+):`(?P<target>[^`]+)`"
    r"|`(?P<label>[^`<]+?)\s*<(?P<url>[^>`]+)>`__?",
    re.DOTALL,
)
_DIRECTIVE = re.compile(r"\.\. (\w[\w-]*)::(?: +(.*))?")
_ENTRY = re.compile(r"(?P<name>\*{0,2}\w[\w.]*)(?: \((?P<type>[^)]*)\))?:(?: +(?P<text>.*))?")
_BULLET = re.compile(r"[-*+] |\d+\. ")
_RAW_REST = re.compile(r"``|:[\w:-]+:`|^ *\.\. |::$", re.MULTILINE)


def markdown(doc: str, where: str, targets: dict[str, str] | None = None) -> str:
    """Turn a Google-style reST docstring into GitHub Markdown.

    Roles become code spans (links when ``targets``, public name -> anchor, has the target),
    ``.. math::`` a fenced ``math`` block, ``.. note::`` / ``.. warning::`` block quotes,
    ``Args:`` and the like lists of names, doctests and ``::`` blocks fenced Python.

    Raises:
        ValueError: markup this does not know, or reST left over; the message names ``where``.
    """
    lines = _Converter(where, targets or {}).blocks(inspect.cleandoc(doc).split("\n"), top=True)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    fenced = r"^[ >]*```.*?^[ >]*```$|^[ >]*\$\$$.*?^[ >]*\$\$$"
    prose = re.sub(fenced, "", text, flags=re.MULTILINE | re.DOTALL)
    if leftover := _RAW_REST.search(prose):
        line = prose[: leftover.end()].rsplit("\n", 1)[-1]
        raise ValueError(f"{where}: reST left in the Markdown: {line!r}")
    return text


class _Converter:
    """Converts the lines of one docstring; ``where`` names it in errors and anchors its links."""

    def __init__(self, where: str, targets: dict[str, str]) -> None:
        self.where, self.targets = where, targets

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.where}: {message}")

    def blocks(self, lines: list[str], top: bool = False) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            line, start = lines[i].strip(), i
            if not line:
                out.append("")
                i += 1
            elif _indent(lines[i]):
                raise self.error(f"unexpected indentation (a misspelt section?): {line!r}")
            elif line.startswith(".."):
                body, i = _indented(lines, i + 1)
                out += self.directive(line, body)
            elif top and line[:-1] in SECTIONS and line.endswith(":"):
                body, i = _indented(lines, i + 1)
                out += self.section(line[:-1], _dedent(body))
            elif line.startswith(">>>"):
                while i < len(lines) and lines[i].strip():
                    i += 1
                code = [re.sub(r"\s+# doctest:.*$", "", code) for code in lines[start:i]]
                out += ["", "```python", *code, "```", ""]
            elif bullet := _BULLET.match(line):
                rest, i = _indented(lines, i + 1)
                item = self.blocks([line[bullet.end() :], *_dedent(rest)])
                out += _list_item(bullet.group(), item)
            else:
                while i < len(lines) and lines[i].strip() and not _indent(lines[i]):
                    i += 1
                paragraph = "\n".join(lines[start:i])
                if not paragraph.endswith("::"):
                    out += self.inline(paragraph).split("\n")
                    continue
                code, i = _indented(lines, i)  # a literal block: "Usage::" reads "Usage:"
                if not code:
                    raise self.error(f"no indented block after {paragraph!r}")
                lead = paragraph[:-1] if re.search(r"\S::$", paragraph) else paragraph[:-2]
                out += [*self.inline(lead.rstrip()).split("\n"), "", "```python"]
                out += [*_trim(_dedent(code)), "```", ""]
        return out

    def directive(self, line: str, body: list[str]) -> list[str]:
        match = _DIRECTIVE.fullmatch(line)
        if not match:
            raise self.error(f"unknown reST markup: {line!r}")
        name, argument = match.group(1), match.group(2)
        content = ([argument] if argument else []) + _dedent(body)
        if content and re.match(r":\w[\w-]*:( |$)", content[0]):
            raise self.error(f"unsupported option in {line!r}: {content[0]!r}")
        if name == "math":
            equations = "\n".join(content).strip().split("\n\n")
            # A ```math fence, not $$: Markdown escapes (\{, \_) are not applied inside fences.
            return [part for eq in equations for part in ("", "```math", eq.strip("\n"), "```", "")]
        if name in ("code", "code-block"):
            return ["", f"```{argument or 'python'}", *_trim(_dedent(body)), "```", ""]
        if name in ADMONITIONS:
            return _quote(_label(ADMONITIONS[name], self.blocks(content)))
        raise self.error(f"unknown directive {line!r}")

    def section(self, name: str, body: list[str]) -> list[str]:
        if admonition := ADMONITIONS.get(name.lower().removesuffix("s")):
            return _quote(_label(admonition, self.blocks(body)))
        if name in TEXT_SECTIONS:
            return ["", *_label(name, self.blocks(body)), ""]
        out = ["", f"**{name}:**", ""]
        i = 0
        while i < len(body):
            if not body[i].strip():
                i += 1
                continue
            entry = _ENTRY.fullmatch(body[i])
            if not entry:
                raise self.error(f"{name}: expected 'name: description', got {body[i]!r}")
            rest, i = _indented(body, i + 1)
            kind = f" (`{entry['type']}`)" if entry["type"] else ""
            item = self.blocks([entry["text"] or "", *_dedent(rest)])
            out += _list_item("- ", [f"`{entry['name']}`{kind}: {item[0]}", *item[1:]])
        return [*out, ""]

    def inline(self, text: str) -> str:
        return _INLINE.sub(self._inline, text)

    def _inline(self, match: re.Match[str]) -> str:
        if match["literal"] is not None:
            literal = re.sub(r"\s*\n\s*", " ", match["literal"])
            if "`" in literal:
                raise self.error(f"a backtick inside ``{literal}``")
            return f"`{literal}`"
        if match["url"] is not None:
            return f"[{match['label']}]({match['url']})"
        role, target = match["role"].removeprefix("py:"), match["target"]
        if role == "math":
            return f"${target}$"
        if role not in LINK_ROLES:
            raise self.error(f"unknown role :{match['role']}:`{target}`")
        if titled := re.fullmatch(r"(.+?)\s*<(.+)>", target, re.DOTALL):
            label, target = titled.groups()
        else:
            shown = target.lstrip("!~")
            label = shown.rsplit(".", 1)[-1] if target.startswith("~") else shown
            target = shown
        anchor = None if match["target"].startswith("!") else self.resolve(target)
        return f"[`{label}`](#{anchor})" if anchor else f"`{label}`"

    def resolve(self, target: str) -> str | None:
        """The anchor of ``target``: as given, then inside ``where``, then by a unique suffix."""
        parts = self.where.split(".")
        for n in range(len(parts), -1, -1):
            anchor = self.targets.get(".".join([*parts[:n], target]))
            if anchor:
                return anchor
        found = {anchor for name, anchor in self.targets.items() if name.endswith(f".{target}")}
        if len(found) > 1:
            raise self.error(f"{target!r} could mean any of {sorted(found)}: qualify it")
        return found.pop() if found else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indented(lines: list[str], i: int) -> tuple[list[str], int]:
    """The blank or indented lines from ``lines[i]`` on, less trailing blanks; where they end."""
    end = i
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end])):
        end += 1
    while end > i and not lines[end - 1].strip():
        end -= 1
    return lines[i:end], end


def _dedent(lines: list[str]) -> list[str]:
    return textwrap.dedent("\n".join(lines)).split("\n") if lines else []


def _trim(lines: list[str]) -> list[str]:
    """Without the blank lines at either end."""
    return "\n".join(lines).strip("\n").split("\n")


def _list_item(marker: str, lines: list[str]) -> list[str]:
    pad = " " * len(marker)
    return [marker + lines[0], *(pad + line if line else "" for line in lines[1:])]


def _label(label: str, lines: list[str]) -> list[str]:
    """``**Returns:** text``, or the label on its own line above a list, code or math."""
    lines = _trim(lines)
    if lines[0] and not re.match(r"```|\$\$|>|[-*+] |\d+\. ", lines[0]):
        return [f"**{label}:** {lines[0]}", *lines[1:]]
    return [f"**{label}:**", "", *lines]


def _quote(lines: list[str]) -> list[str]:
    return ["", *(f"> {line}" if line else ">" for line in lines), ""]


def _anchor(qualified: str) -> str:
    """GitHub's anchor for the heading ``## `qualified```: lower case, punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", qualified.lower()).replace(" ", "-")


def _public(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        ]
    return list(names)


def _entries() -> list[tuple[str, Any, list[str]]]:
    """(qualified name, object, other names of it) for each public name, in page order."""
    entries: list[tuple[str, Any, list[str]]] = []
    seen: dict[tuple[str, int], list[str]] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in _public(module):
            obj = getattr(module, name)
            if (name, id(obj)) in seen:
                seen[name, id(obj)].append(f"{module_name}.{name}")
                continue
            defined = [f"{obj.__module__}.{obj.__qualname__}"] if _is_api(obj) else []
            entries.append((f"{module_name}.{name}", obj, defined))
            seen[name, id(obj)] = defined
    return entries


def _is_api(obj: object) -> bool:
    """A class or function: documented by its ``__doc__``, unlike a constant."""
    return inspect.isclass(obj) or inspect.isroutine(obj)


def _members(cls: type) -> Iterator[tuple[str, Any, str]]:
    """Public methods and properties defined on ``cls`` itself that have a docstring."""
    for name, member in vars(cls).items():
        kinds = (property, classmethod, staticmethod)
        documented = (inspect.isfunction(member) or isinstance(member, kinds)) and member.__doc__
        if documented and not name.startswith("_"):
            yield name, member, inspect.cleandoc(member.__doc__)


def docstring(module_name: str, name: str, obj: object) -> str:
    """The docstring of a public name; a constant's is the string literal after its assignment.

    Raises:
        ValueError: there is none (never the docstring of the constant's type).
    """
    # A class's own __doc__: inspect.getdoc would inherit one from a base class.
    doc = obj.__doc__ if _is_api(obj) else _literal_doc(module_name, name)
    if not doc:
        raise ValueError(f"{module_name}.{name} has no docstring")
    return inspect.cleandoc(doc)


def _literal_doc(module_name: str, name: str) -> str | None:
    """The string after ``name = ...`` in the module, or in the one it imports ``name`` from."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    for node, following in itertools.pairwise(tree.body):
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets += [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                return str(following.value.value)
            return None
    for imports in ast.walk(tree):
        if not isinstance(imports, ast.ImportFrom):
            continue
        for alias in imports.names:
            if (alias.asname or alias.name) == name:
                source = "." * imports.level + (imports.module or "")
                package = module.__package__ or module_name
                return _literal_doc(importlib.util.resolve_name(source, package), alias.name)
    return None


def _signature(prefix: str, obj: Any, drop_first: bool = False) -> str:
    """``prefix(parameters) -> returns``, one parameter a line when that is long."""
    if not _is_api(obj):
        value = repr(obj)
        return f"{prefix} = {value}" if len(value) < 80 else prefix
    call = obj.__call__ if getattr(obj, "_is_protocol", False) else obj  # a callback protocol
    try:
        signature = inspect.signature(call)
    except (TypeError, ValueError):
        return prefix
    params = list(signature.parameters.values())[int(drop_first or call is not obj) :]
    parts, star = [], False
    for i, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
        star = star or param.kind in (param.VAR_POSITIONAL, param.KEYWORD_ONLY)
        parts.append(_parameter(param))
        following = params[i + 1].kind if i + 1 < len(params) else None
        if param.kind is param.POSITIONAL_ONLY and following is not param.POSITIONAL_ONLY:
            parts.append("/")
    returns = signature.return_annotation
    tail = "" if inspect.isclass(obj) or returns is signature.empty else f" -> {_type(returns)}"
    text = f"{prefix}({', '.join(parts)}){tail}"
    if len(text) <= 100:
        return text
    return f"{prefix}(\n" + "".join(f"    {part},\n" for part in parts) + f"){tail}"


def _parameter(param: inspect.Parameter) -> str:
    """``name: type = default`` with the annotation as written, not quoted."""
    text = str(param.replace(annotation=param.empty, default=param.empty))  # "*args", "x"
    if param.annotation is not param.empty:
        text += f": {_type(param.annotation)}"
    if param.default is not param.empty:
        text += f"{' = ' if param.annotation is not param.empty else '='}{param.default!r}"
    return text


def _type(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else str(inspect.formatannotation(annotation))


def render() -> str:
    """The whole of docs/api.md."""
    entries = _entries()
    targets: dict[str, str] = {}
    for qualified, obj, others in entries:
        names = [qualified, *others]
        targets.update(dict.fromkeys(names, _anchor(qualified)))
        for member, _, _ in _members(obj) if inspect.isclass(obj) else []:
            anchor = _anchor(f"{qualified}.{member}")
            targets.update({f"{name}.{member}": anchor for name in names})
    contents = [f"- [`{qualified}`](#{_anchor(qualified)})" for qualified, _, _ in entries]
    page = [
        "# API reference\n",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit.\n",
        *contents,
    ]
    for qualified, obj, _ in entries:
        module_name, _, name = qualified.rpartition(".")
        doc = docstring(module_name, name, obj)
        page += [f"\n## `{qualified}`\n", f"```python\n{_signature(qualified, obj)}\n```\n"]
        page.append(markdown(doc, qualified, targets))
        for member_name, member, member_doc in _members(obj) if inspect.isclass(obj) else []:
            where = f"{qualified}.{member_name}"
            page.append(f"\n### `{where}`\n")
            if not isinstance(member, property):
                function = getattr(member, "__func__", member)
                signature = _signature(where, function, not isinstance(member, staticmethod))
                page.append(f"```python\n{signature}\n```\n")
            page.append(markdown(member_doc, where, targets))
    return "\n".join(page) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the working tree's fastforward, installed or not
    API_MD.write_text(render())
    print(f"wrote {API_MD}")
