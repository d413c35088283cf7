"""Argument descriptions that the wrapper and the functional stage share, written once.

As torch interpolates one ``_foreach_doc`` into every optimizer, :func:`shares_args` writes
these into a docstring wherever a line says ``name: {shared}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_ARGS = {
    "search": """\
        search: How a stage chooses the points it evaluates: a built-in strategy by name,
            ``"parabolic"`` (:func:`~fastforward.functional.parabolic_search`, the default),
            ``"linear"`` (:func:`~fastforward.functional.linear_search`, the paper's),
            ``"doubling"`` (:func:`~fastforward.functional.doubling_search`) or
            ``"warm_start"`` (:func:`~fastforward.functional.warm_start_search`), each
            described with its cost there; or a
            :class:`~fastforward.functional.SearchStrategy` of your own, called as
            ``search(ray, max_tau, start)``. The stage lands on the best point evaluated.""",
    "max_tau": """\
        max_tau: The largest τ evaluated, at most ``2**53``: a stage ends there on a loss that
            keeps falling (default: 1000).""",
    "min_improvement": """\
        min_improvement: A stage leaves ``W_n`` only if its best point beats ``L_0`` by this
            fraction of ``|L_0|``; otherwise it lands on ``W_n`` with ``τ = 0``. It judges the
            stage as a whole: single simulated steps at a small learning rate gain far less
            than any useful margin (default: ``1e-3``).""",
    "foreach": """\
        foreach: Use the multi-tensor ``torch._foreach_*`` kernels; ``None`` means yes.
            ``False`` loops over the tensors, for tensor types without ``_foreach`` support: the
            same bits either way (default: ``None``).""",
}

_Documented = TypeVar("_Documented", bound=Callable[..., object])


def shares_args(documented: _Documented) -> _Documented:
    """Replace each docstring line ``name: {shared}`` by the shared description of ``name``."""
    lines = (documented.__doc__ or "").split("\n")
    shared = [_ARGS.get(_placeholder(line), line) for line in lines]
    documented.__doc__ = "\n".join(shared)
    return documented


def _placeholder(line: str) -> str:
    """The argument a placeholder line names, else ``""``."""
    name, _, rest = line.strip().partition(": ")
    return name if rest == "{shared}" and name in _ARGS else ""
