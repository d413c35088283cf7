"""How the wrapper shares the wrapped optimizer: its containers, and a guard on its ``step``."""

from __future__ import annotations

import warnings
import weakref
from typing import Any

from torch.optim import Optimizer


class SharedContainer:
    """``param_groups``, ``state`` or ``defaults`` of the wrapped optimizer: the same object.

    Until ``optimizer`` is set, ``Optimizer.__init__`` fills private ones of the wrapper's own.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.own = name, f"_init_{name}"

    def __get__(self, wrapper: Any, owner: type | None = None) -> Any:
        if wrapper is None:
            return self
        base = wrapper.__dict__.get("optimizer")
        return wrapper.__dict__[self.own] if base is None else getattr(base, self.name)

    def __set__(self, wrapper: Any, value: Any) -> None:
        base = wrapper.__dict__.get("optimizer")
        if base is None:
            wrapper.__dict__[self.own] = value
        else:
            setattr(base, self.name, value)


class BaseStepGuard:
    """A step pre-hook on the wrapped optimizer, holding its wrapper weakly.

    Weakly, so that a wrapper the user dropped is freed and the optimizer can be wrapped again.
    """

    def __init__(self, wrapper: Any) -> None:
        self.wrapper = weakref.ref(wrapper)

    def __call__(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        wrapper = self.wrapper()
        if wrapper is not None:
            wrapper._before_base_step()


def supersede_other_wrappers(optimizer: Optimizer, wrapper: Any) -> None:
    """Make ``wrapper`` the only one of ``optimizer``: older live wrappers stop working.

    As when a notebook cell that builds the wrapper runs again while the name still holds the
    last one: the new wrapper wins, and the old one's ``step()`` raises from then on (two
    wrappers stepped together would each run stages). A ``UserWarning`` says so.
    """
    hooks = optimizer._optimizer_step_pre_hooks
    for key, hook in list(hooks.items()):
        old = hook.wrapper() if isinstance(hook, BaseStepGuard) else wrapper
        if old is wrapper:
            continue
        del hooks[key]
        if old is not None:
            old._supersede()
            warnings.warn(
                "fastforward: optimizer was already wrapped by another FastForward; the new "
                "wrapper replaces it, and the old one's step() now raises",
                stacklevel=3,
            )
