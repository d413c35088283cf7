"""Argument checks of the wrapper, the functional stage and the helpers, all in one place.

Each check names the argument it rejects and returns the value as a plain Python ``int``,
``float`` or ``str``: numpy scalars and ``str`` enums are accepted but never stored, so that
checkpoints hold only plain types and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

MAX_TAU_LIMIT = 2**53
"""The largest ``max_tau`` accepted: every τ up to it is exact as a float64 step multiplier."""


def _is_bool(value: object) -> bool:
    """``bool``, ``numpy.bool_`` or a boolean tensor: never taken for a number."""
    kind = type(value)
    if isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    ):
        return True
    return isinstance(value, Tensor) and value.dtype == torch.bool


def _check_bool(name: str, value: object) -> bool:
    """``value`` as a ``bool``; ``bool`` and ``numpy.bool_`` are accepted, nothing else."""
    if not _is_bool(value) or isinstance(value, Tensor):
        raise TypeError(f"fastforward: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``; any integral type but ``bool`` is accepted."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"fastforward: {name} must be an int, got {type(value).__name__}")
    plain = operator.index(value)
    if plain < low:
        raise ValueError(f"fastforward: {name} must be >= {low}, got {plain}")
    if high is not None and plain > high:
        raise ValueError(f"fastforward: {name} must be <= {high}, got {plain}")
    return plain


def _check_float(name: str, value: object) -> float:
    """``value`` as a ``float``; any real type but ``bool`` is accepted.

    A value too large for a float (an ``int`` like ``10**400``) becomes ``±inf``, which the
    callers' range checks then refuse by name.
    """
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastforward: {name} must be a float, got {type(value).__name__}")
    return _saturated_float(value)


def _saturated_float(value: float | numbers.Real) -> float:
    """``float(value)``, or ``±inf`` where it overflows (Python ints and fractions do)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def _check_cost_ratio(cost_ratio: object) -> float | None:
    """None, or the cost of a validation pass in training steps: finite and positive."""
    if cost_ratio is None:
        return None
    value = _check_float("cost_ratio", cost_ratio)
    if not 0.0 < value < math.inf:
        raise ValueError(
            f"fastforward: cost_ratio must be a finite number > 0 (the cost of one validation "
            f"pass in training steps, e.g. 0.5), got {value}"
        )
    return value


DELTA_SPANS = ("step", "interval")


def _check_delta_span(delta_span: object) -> str:
    """``"step"`` or ``"interval"`` (a ``str`` enum is stored as the plain string it equals)."""
    if not isinstance(delta_span, str) or delta_span not in DELTA_SPANS:
        raise ValueError(
            f"fastforward: delta_span must be one of {DELTA_SPANS} (the update of the last "
            f"optimizer step, or of the whole interval), got {delta_span!r}"
        )
    return str.__str__(delta_span)


def _check_min_improvement(min_improvement: object) -> float:
    value = _check_float("min_improvement", min_improvement)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"fastforward: min_improvement must be in [0, 1), got {value}")
    return value


def _check_max_tau_ratio(max_tau_ratio: object) -> float | None:
    if max_tau_ratio is None:
        return None
    if _is_bool(max_tau_ratio) or not isinstance(max_tau_ratio, numbers.Real):
        raise TypeError(
            "fastforward: max_tau_ratio must be a float or None, "
            f"got {type(max_tau_ratio).__name__}"
        )
    value = _saturated_float(max_tau_ratio)
    if not 0.0 < value < math.inf:
        raise ValueError(f"fastforward: max_tau_ratio must be positive and finite, got {value}")
    return value


def _as_loss(value: object, name: str) -> float:
    """A loss as a ``float``: a Python or numpy real, or a 0-dim tensor; ``TypeError`` otherwise.

    ``name`` is the callable that returned it, for the message.
    """
    checked = _checked_loss(value, name)
    return float(checked.detach()) if isinstance(checked, Tensor) else checked


def _checked_loss(value: object, name: str) -> float | Tensor:
    """A loss as a ``float`` or a 0-dim real tensor, not read yet (no host synchronisation)."""
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise TypeError(
                f"fastforward: {name} must return a Python number or a 0-dim tensor, got a "
                f"tensor of shape {tuple(value.shape)}; reduce it, e.g. with .mean()"
            )
        if _is_bool(value) or value.is_complex():
            raise TypeError(f"fastforward: {name} returned a {value.dtype} tensor, not a loss")
        return value
    if isinstance(value, numbers.Real) and not _is_bool(value):
        return _saturated_float(value)
    raise TypeError(
        f"fastforward: {name} must return a Python number or a 0-dim tensor, "
        f"got {type(value).__name__}"
    )


def _check_tau(tau: object, max_tau: int) -> int:
    """A τ a search strategy evaluated, as an ``int`` in ``[0, max_tau]``."""
    try:
        if _is_bool(tau):
            raise TypeError
        index = operator.index(tau)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"fastforward: a search evaluated tau={tau!r}; tau must be an int"
        ) from None
    if not 0 <= index <= max_tau:
        raise ValueError(
            f"fastforward: a search evaluated tau={tau!r}; tau must be in [0, max_tau], "
            f"max_tau={max_tau}"
        )
    return index


def _distinct(
    params: object, delta: object, anchor: object
) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Check the parallel lists; keep the first entry of a tensor listed more than once.

    A tensor listed twice (``[w, w]``, or tied weights listed once per module) would be moved
    by ``2τΔ`` while the stage reports ``τ``: each tensor is moved exactly once.
    """
    params_ = _tensor_list("params", params)
    delta_ = _tensor_list("delta", delta)
    anchor_ = None if anchor is None else _tensor_list("anchor", anchor)
    if not params_:
        raise ValueError("fastforward: params is empty; pass the tensors the stage moves")
    for name, tensors in (("delta", delta_), ("anchor", anchor_)):
        if tensors is not None:
            _check_parallel(name, tensors, params_)
    first: dict[int, int] = {}  # id of a tensor -> index of its first entry
    for i, p in enumerate(params_):
        first.setdefault(id(p), i)
    if len(first) == len(params_):
        return params_, delta_, anchor_
    keep = list(first.values())
    return (
        [params_[i] for i in keep],
        [delta_[i] for i in keep],
        None if anchor_ is None else [anchor_[i] for i in keep],
    )


def _tensor_list(name: str, tensors: object) -> list[Tensor]:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"fastforward: {name} must be a list of tensors")
    return list(tensors)


def _check_parallel(name: str, tensors: list[Tensor], params: list[Tensor]) -> None:
    if len(tensors) != len(params):
        raise ValueError(
            f"fastforward: {name} has {len(tensors)} tensors for {len(params)} params; "
            "pass one per parameter, in the same order"
        )
    for i, (p, t) in enumerate(zip(params, tensors, strict=True)):
        if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
            raise ValueError(
                f"fastforward: {name}[{i}] is {tuple(t.shape)} {t.dtype} on {t.device}, but "
                f"params[{i}] is {tuple(p.shape)} {p.dtype} on {p.device}"
            )


def _check_kinds(optimizer: object, model: object, val_closure: object, on_stage: object) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            "fastforward: optimizer must be a torch.optim.Optimizer, "
            f"got {type(optimizer).__name__}"
        )
    usage = "FastForward(optimizer, model, val_closure, interval=6)"
    if not isinstance(model, nn.Module):
        hint = " (was model left out?)" if callable(model) and val_closure is None else ""
        raise TypeError(
            f"fastforward: model must be a torch.nn.Module, got {type(model).__name__}{hint}; "
            f"the signature is {usage}"
        )
    if val_closure is None:
        raise TypeError(
            "fastforward: val_closure is required: a zero-argument callable returning the loss "
            f"on the tiny validation set; the signature is {usage}"
        )
    if not callable(val_closure):
        raise TypeError(
            "fastforward: val_closure must be a zero-argument callable returning the validation "
            f"loss, got {type(val_closure).__name__}"
        )
    if on_stage is not None and not callable(on_stage):
        raise TypeError(
            f"fastforward: on_stage must be callable or None, got {type(on_stage).__name__}"
        )


def _check_closure_signature(val_closure: Callable[..., object]) -> bool:
    """Refuse a closure that needs arguments; whether it takes the keyword ``stage``.

    An ``nn.Module`` is judged by its ``forward``, which its ``__call__`` forwards to.
    """
    target = val_closure.forward if isinstance(val_closure, nn.Module) else val_closure
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    stage = parameters.get("stage")
    takes_stage = stage is not None and stage.kind in by_keyword
    required = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and not (name == "stage" and takes_stage)
    ]
    if required:
        raise TypeError(
            "fastforward: val_closure is called with no arguments (or only stage=k), but its "
            f"parameters {required} have no default; close over the validation batch instead, "
            "e.g. with fastforward.validation_closure(model, [batch])"
        )
    return takes_stage


def _check_movable(params: list[Tensor], model: nn.Module, whose: str = "the optimizer's") -> None:
    """``params`` are tensors a stage can move: ``model``'s own (it evaluates ``model``), dense.

    Fails when the optimizer was built on another copy of the model, or holds copies of its
    own, e.g. the flat fp32 partitions that DeepSpeed ZeRO copies into the model after a step
    (``RuntimeError``); or when a tensor has no dense data to move: a sparse layout
    (``TypeError``) or the meta device (``ValueError``).
    """
    names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    for p in params:
        name = names.get(id(p))
        if name is None:
            continue
        if p.layout != torch.strided:
            raise TypeError(
                f"fastforward: parameter {name!r} of `model` has layout {p.layout}; a stage "
                "moves dense (torch.strided) tensors only: keep it out of the optimizer, or "
                "freeze it (requires_grad=False)"
            )
        if p.device.type == "meta":
            raise ValueError(
                f"fastforward: parameter {name!r} of `model` is on the meta device (it has no "
                "data); materialise the model (e.g. to_empty() and load its weights) before "
                "training it"
            )
    owned = names.keys()
    strangers = sum(id(p) not in owned for p in params)
    if strangers:
        raise RuntimeError(
            f"fastforward: {strangers} of {whose} {len(params)} trainable tensors are not "
            "parameters of `model`, so a stage would move tensors that `model` does not use. "
            "Build the optimizer on this model's parameters (not on a copy, nor before "
            "get_peft_model or deepcopy); optimizers that keep master copies (DeepSpeed ZeRO) "
            "are not supported, use DDP or FSDP"
        )


def _refuse_deferred_parameter_updates(optimizer: Optimizer) -> None:
    """DeepSpeed ZeRO steps flat partitions and copies them into the model after ``step()``.

    A stage inside ``step()`` would read and write stale weights, so refuse it outright.
    """
    if type(optimizer).__module__.split(".")[0] == "deepspeed":
        raise TypeError(
            f"fastforward: {type(optimizer).__name__} is a DeepSpeed optimizer, which updates the "
            "model only after step() returns, so a Fast Forward stage would see stale weights; "
            "wrap a torch.optim optimizer and use DDP or FSDP instead"
        )


def _refuse_flat_parameter_sharding(model: nn.Module) -> None:
    """FSDP1 (``FullyShardedDataParallel``) keeps each rank's shard in flat parameters.

    Its modules gather them for a forward and may keep them gathered after a no-grad one, and
    the tensors a user optimizes are views it re-points; a stage could read or write the wrong
    storage, and nothing checks it. FSDP2 (``fully_shard``) is supported instead.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")  # loaded once FSDP1 can be in use
    kind = getattr(fsdp, "FullyShardedDataParallel", None)
    if kind is not None and any(isinstance(module, kind) for module in model.modules()):
        raise TypeError(
            "fastforward: model contains FullyShardedDataParallel (FSDP1) modules, which Fast "
            "Forward does not support (a stage could read and write gathered copies of the flat "
            "parameters instead of the shards); shard the model with FSDP2, "
            "torch.distributed.fsdp.fully_shard, which it supports (docs/integrations.md)"
        )


def _check_interval_bounds(bounds: object, interval: int) -> tuple[int, int]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(
            "fastforward: adaptive_interval must be a (shortest, longest) pair of ints or None, "
            f"got {bounds!r}"
        )
    shortest = _check_int("adaptive_interval[0]", bounds[0], 1)
    longest = _check_int("adaptive_interval[1]", bounds[1], 1)
    if not shortest <= interval <= longest:
        raise ValueError(
            f"fastforward: adaptive_interval {(shortest, longest)} must satisfy shortest <= "
            f"interval ({interval}) <= longest"
        )
    return shortest, longest
