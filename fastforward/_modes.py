"""Switching a model to eval mode and back, submodule by submodule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; afterwards put every submodule back in the mode it had.

    Every submodule's flag is restored, not only those switched here: a ``val_closure`` that
    ends with ``model.train()`` must not leave a submodule the caller had frozen in eval (a
    BatchNorm whose running statistics would then drift) in training mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    for module, _ in modes:
        module.training = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
