"""Switching a model to eval mode and back, submodule by submodule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; afterwards put back the submodules it switched.

    One walk over the module tree finds the submodules in training mode; when there is none
    (a validation closure called inside a stage, which already switched) nothing else is done.
    Only the flags it changed are restored, so a submodule the caller left in eval stays so.
    """
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True
