"""How the wrapper shares the wrapped optimizer: its containers, and a guard on its ``step``."""

from __future__ import annotations

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


def refuse_second_wrapper(optimizer: Optimizer) -> None:
    for hook in optimizer._optimizer_step_pre_hooks.values():
        if isinstance(hook, BaseStepGuard) and hook.wrapper() is not None:
            raise ValueError(
                "fastforward: optimizer is already wrapped by another FastForward that is still "
                "alive; two wrappers would each run stages. Use the existing wrapper, or drop "
                "every reference to it first"
            )
