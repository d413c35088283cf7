"""Build the validation closure a :class:`~fastforward.FastForward` stage evaluates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fastforward._checks import _as_loss, _check_int
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


class ValidationClosure:
    """The mean loss of ``model`` over fixed validation batches; see :func:`validation_closure`.

    A callable object rather than a function closure, so that ``copy.deepcopy`` of a model
    together with its wrapper gives a closure that evaluates the copied model.
    """

    def __init__(
        self, model: nn.Module, groups: list[list[Any]], loss_fn: LossFn | None = None
    ) -> None:
        self.model, self.groups, self.loss_fn = model, groups, loss_fn

    @property
    def rotates(self) -> bool:
        """Whether calls with different ``stage`` evaluate different batches."""
        return len(self.groups) > 1

    def __call__(self, stage: int = 0) -> Tensor:
        """The unweighted mean of the per-batch losses of group ``stage mod groups``."""
        compute = self.loss_fn or _model_output_loss
        source = "the model's forward (its output's .loss)" if self.loss_fn is None else "loss_fn"
        with torch.no_grad(), _eval_mode(self.model):
            group = self.groups[stage % len(self.groups)]
            losses = [_batch_loss(compute(self.model, batch), source) for batch in group]
        return torch.stack(losses).mean()


def _batch_loss(value: object, source: str) -> Tensor:
    """One batch's loss as a 0-dim float tensor; ``source`` names what returned it.

    A real number or a real tensor; a tensor of several elements (per-example losses, or the
    per-replica losses of ``nn.DataParallel``) is averaged. ``TypeError`` or ``ValueError``
    naming ``source`` otherwise.
    """
    if isinstance(value, Tensor):
        if value.numel() == 0:
            raise ValueError(f"fastforward: {source} returned an empty tensor, not a loss")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"fastforward: {source} returned a {value.dtype} tensor, not a loss")
        return value.detach().float().mean()
    return torch.tensor(_as_loss(value, source), dtype=torch.float32)


def validation_closure(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None = None,
    *,
    rotate: int | None = None,
) -> ValidationClosure:
    """Return a closure: the mean loss over a fixed handful of batches.

    The batches are materialised once (``list(batches)``), so a ``DataLoader`` is read only here
    and every evaluation sees the same examples. Each call runs under ``torch.no_grad()`` with the
    model in eval mode and restores the model's mode, so the closure also works outside a stage.

    Args:
        model: The model to evaluate.
        batches: The tiny validation set as a list (or other iterable) of batches, e.g.
            ``[batch]`` for one batch of 32 examples, as the model takes them. Dict batches
            (Hugging Face style) are passed as ``model(**batch)``. A single dict or tensor is
            refused: iterating it would give its keys or rows.
        loss_fn: ``loss_fn(model, batch) -> loss``, a 0-dim tensor or a number (a tensor of
            several losses, per example or per ``DataParallel`` replica, is averaged).
            Default: ``model(**batch).loss``.
        rotate: If given, ``batches`` is a larger held-out pool cut into consecutive groups of
            ``rotate`` batches (a remainder is dropped), and stage ``k`` is judged on group
            ``k mod groups``: each group stays tiny, but stages stop fitting the same few
            examples. Default: every call uses all batches.

    Returns:
        A callable ``closure(stage=0)`` returning the unweighted mean of the per-batch losses
        (of the stage's group, with ``rotate``) as a 0-dim tensor. ``FastForward`` passes
        ``stage`` itself. It holds ``model``, so a deep copy of both evaluates the copy.

    Raises:
        TypeError: ``model``, ``batches``, ``loss_fn`` or ``rotate`` has the wrong type.
        ValueError: ``batches`` is empty or ``rotate`` is out of range.

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastforward: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batches, (Mapping, Tensor)) or not isinstance(batches, Iterable):
        raise TypeError(
            "fastforward: batches must be a list of batches, got a single "
            f"{type(batches).__name__}; pass [batch]"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"fastforward: loss_fn must be callable(model, batch) or None, got "
            f"{type(loss_fn).__name__}"
        )
    fixed = list(batches)
    if not fixed:
        raise ValueError("fastforward: batches is empty; pass at least one validation batch")
    size = len(fixed) if rotate is None else _check_int("rotate", rotate, 0)
    if not 1 <= size <= len(fixed):
        raise ValueError(
            f"fastforward: rotate must be between 1 and the number of batches ({len(fixed)}), "
            f"got {rotate}"
        )
    groups = [fixed[i : i + size] for i in range(0, len(fixed) - size + 1, size)]
    return ValidationClosure(model, groups, loss_fn)
