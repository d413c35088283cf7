"""Build the validation closure a :class:`~fastforward.FastForward` stage evaluates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fastforward._modes import _eval_mode

LossFn = Callable[[nn.Module, Any], Tensor]


def _model_output_loss(model: nn.Module, batch: Any) -> Tensor:
    """``model(**batch).loss`` for a dict batch (Hugging Face style), else ``model(batch).loss``."""
    output = model(**batch) if isinstance(batch, Mapping) else model(batch)
    loss = getattr(output, "loss", None)
    if loss is None:
        raise TypeError(
            "fastforward: the model output has no .loss; pass loss_fn=lambda model, batch: ... "
            "to validation_closure"
        )
    return loss  # type: ignore[no-any-return]


def validation_closure(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None = None,
    *,
    rotate: int | None = None,
) -> Callable[..., Tensor]:
    """Return a closure: the mean loss over a fixed handful of batches.

    The batches are materialised once (``list(batches)``), so a ``DataLoader`` is read only here
    and every evaluation sees the same examples. Each call runs under ``torch.no_grad()`` with the
    model in eval mode and restores the model's mode, so the closure also works outside a stage.

    Args:
        model: The model to evaluate.
        batches: The tiny validation set, e.g. one batch of 32 examples, as the model takes them.
            Dict batches (Hugging Face style) are passed as ``model(**batch)``.
        loss_fn: ``loss_fn(model, batch) -> 0-dim tensor``. Default: ``model(**batch).loss``.
        rotate: If given, ``batches`` is a larger held-out pool cut into consecutive groups of
            ``rotate`` batches (a remainder is dropped), and stage ``k`` is judged on group
            ``k mod groups``: each group stays tiny, but stages stop fitting the same few
            examples. Default: every call uses all batches.

    Returns:
        A callable ``closure(stage=0)`` returning the unweighted mean of the per-batch losses
        (of the stage's group, with ``rotate``) as a 0-dim tensor. ``FastForward`` passes
        ``stage`` itself.

    Example:
        >>> import torch
        >>> from fastforward import validation_closure
        >>> model = torch.nn.Linear(3, 1)
        >>> batch = (torch.ones(4, 3), torch.zeros(4, 1))
        >>> mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        >>> closure = validation_closure(model, [batch], mse)
        >>> closure().shape
        torch.Size([])
    """
    fixed = list(batches)
    if not fixed:
        raise ValueError("fastforward: batches is empty; pass at least one validation batch")
    if rotate is not None and not 1 <= rotate <= len(fixed):
        raise ValueError(
            f"fastforward: rotate must be between 1 and the number of batches ({len(fixed)}), "
            f"got {rotate}"
        )
    size = rotate or len(fixed)
    groups = [fixed[i : i + size] for i in range(0, len(fixed) - size + 1, size)]
    compute = loss_fn or _model_output_loss

    def closure(stage: int = 0) -> Tensor:
        with torch.no_grad(), _eval_mode(model):
            group = groups[stage % len(groups)]
            losses = [compute(model, batch).detach().float() for batch in group]
        return torch.stack(losses).mean()

    return closure
