"""Agreement across ranks: every rank must take the same stage decisions.

Under DDP each rank evaluates the validation closure on its own data; under FSDP each rank also
holds only a shard of Δ. If ranks decided alone they could accept different τ, run different
numbers of forward passes and deadlock in the next collective. These helpers reduce the two
numbers a stage decides on, so that all ranks see the same values.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _check_process_group(group: object) -> Any:
    """``None`` (the default group) or a ``torch.distributed.ProcessGroup``; else ``TypeError``."""
    if group is None or (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        return group
    raise TypeError(
        "fastforward: process_group must be None (the default group) or a "
        f"torch.distributed.ProcessGroup, got {type(group).__name__}"
    )


def _world(group: Any) -> int:
    """Number of ranks to agree with: 1 when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def _collective_device(group: Any, tensor_device: torch.device) -> torch.device:
    """Where a reduction's tensor must live: the CPU for gloo, the parameters' device otherwise."""
    if _world(group) > 1 and dist.get_backend(group) == "gloo":
        return torch.device("cpu")
    return tensor_device


def _mean_across_ranks(value: float | Tensor, device: torch.device, group: Any) -> float:
    """The mean of ``value`` over the ranks of ``group`` (NaN anywhere gives NaN everywhere).

    ``value`` is a number or a 0-dim tensor; a tensor is reduced where it is and read once, so
    an evaluation costs one host synchronisation, not one before and one after the reduction.
    """
    world = _world(group)
    if world == 1:
        return float(value)
    if isinstance(value, Tensor):
        total = value.detach().to(device=device, dtype=torch.float64).reshape(1)
    else:
        total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return float(total) / world


def _max_across_ranks(value: float, device: torch.device, group: Any) -> float:
    """The largest ``value`` over the ranks of ``group``, NaN if any rank has NaN."""
    if _world(group) == 1:
        return value
    # MAX does not reliably propagate NaN, so non-finiteness travels as a separate flag.
    finite = math.isfinite(value)
    flags = [value if finite else 0.0, 0.0 if finite else 1.0]
    both = torch.tensor(flags, dtype=torch.float64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    largest, any_nonfinite = both.tolist()
    return math.nan if any_nonfinite else largest


def _local_shard(param: Tensor) -> Tensor:
    """The tensor a stage works on: this rank's shard for an FSDP2 ``DTensor``, else ``param``.

    Every stage operation is elementwise, so moving each rank's local shard moves the whole
    parameter exactly, without the collectives (or missing sharding rules) of ``DTensor`` ops.
    In-place writes to the returned tensor write the parameter.
    """
    # Not imported here (it costs ~0.7 s): a DTensor exists only once its module is loaded.
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    if dtensor_module is not None and isinstance(param, dtensor_module.DTensor):
        return param.to_local()  # type: ignore[no-any-return]
    return param


def _reshard_fsdp_modules(model: Any) -> None:
    """Free the gathered parameters of ``model``'s FSDP2 modules: the next forward regathers.

    FSDP2 keeps a module's parameters gathered after a forward it does not reshard after (the
    root's, and any with ``reshard_after_forward=False``) until its backward, and a validation
    pass has none: without this, every point after ``L_0`` would be evaluated at ``W_n``, and
    the next training step would run at the last point evaluated instead of the landing.
    """
    fsdp_module = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp_module, "FSDPModule", None)
    if kind is None:
        return
    for module in model.modules():
        if isinstance(module, kind):
            module.reshard()
