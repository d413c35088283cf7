"""Tensor math of a Fast Forward stage, on plain lists of tensors, and the buffers it works in.

Every function takes parallel lists (``params[i]``, ``anchor[i]`` and ``delta[i]`` have one shape,
dtype and device) and mutates only the list named first. ``foreach=True`` uses the multi-tensor
``torch._foreach_*`` kernels; ``False`` loops over the tensors one at a time, which gives the same
bits and exists for tensor types without ``_foreach`` support.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fastforward._checks import _check_owned_by
from fastforward._distributed import _local_shard


def _pairwise_(
    method: str, dst: list[Tensor], src: list[Tensor], *, foreach: bool, **kw: Any
) -> None:
    """``dst[i].<method>_(src[i], **kw)`` for every ``i``: one ``_foreach`` kernel, or a loop."""
    if foreach:
        getattr(torch, f"_foreach_{method}_")(dst, src, **kw)
    else:
        for d, s in zip(dst, src, strict=True):
            getattr(d, f"{method}_")(s, **kw)


def _copy_(dst: list[Tensor], src: list[Tensor], *, foreach: bool) -> None:
    """``dst[i] <- src[i]``, bit for bit."""
    _pairwise_("copy", dst, src, foreach=foreach)


def _reversed_delta_from_snapshot_(
    snapshot: list[Tensor], params: list[Tensor], *, foreach: bool
) -> None:
    """Turn a snapshot of ``W_{n-1}`` into ``-Δ = W_{n-1} - W_n`` in place (Eq. 2), in one pass.

    A point is then ``W_n + (-τ)(-Δ)``, which IEEE arithmetic rounds exactly as ``W_n + τΔ``
    (negation is exact, and rounding is symmetric about zero).
    """
    _pairwise_("sub", snapshot, params, foreach=foreach)


def _set_point_(
    params: list[Tensor],
    anchor: list[Tensor],
    delta: list[Tensor],
    tau: int,
    *,
    foreach: bool,
    reversed_delta: bool = False,
) -> None:
    """``params <- anchor + tau * delta``, computed from the anchor, never incrementally.

    With ``reversed_delta``, ``delta`` holds ``-Δ`` and the move is ``anchor + (-tau) * delta``:
    the same bits. Moving to the same ``tau`` twice writes the same bits, which is what makes
    rollback exact, and rounding does not accumulate over long stages in low precision.
    ``tau == 0`` restores the anchor itself (``x + 0 * d`` is not always ``x``: ``-0.0``,
    ``inf * 0``).
    """
    _copy_(params, anchor, foreach=foreach)
    if tau == 0:
        return
    _pairwise_("add", params, delta, foreach=foreach, alpha=-tau if reversed_delta else tau)


def _max_abs(tensors: list[Tensor]) -> float:
    """Largest ``|x|`` over all elements of all tensors: 0.0 if all are zero, NaN or inf if any is.

    One host-device synchronisation, whatever the number of tensors.
    """
    nonempty = [t for t in tensors if t.numel() > 0]
    if not nonempty:
        return 0.0
    norms = torch._foreach_norm(nonempty, ord=math.inf)
    device = norms[0].device
    if all(n.dtype == norms[0].dtype and n.device == device for n in norms):
        # The largest of the norms in their own dtype is exact: one stack, one read.
        return float(torch.stack(norms).max())
    # Widen, never narrow: a float64 update of 1e-163 must not round to a float32 zero.
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    return float(torch.stack([n.to(device=device, dtype=dtype) for n in norms]).max())


class StageBuffers:
    """Buffers on each parameter's device and dtype, reused from stage to stage while they fit.

    Attributes:
        owners: The parameters the next stage moves.
        params: What it writes: their local shards (FSDP2), else the parameters themselves.
        anchor: ``W_n`` during a stage.
        delta: ``W_{n-1}`` from :meth:`snapshot_` to :meth:`reverse_`, then ``-Δ``.
    """

    def __init__(self) -> None:
        self.free()

    def free(self) -> None:
        self.owners: list[Tensor] = []
        self.params: list[Tensor] = []
        self.anchor: list[Tensor] = []
        self.delta: list[Tensor] = []
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []

    @torch.no_grad()
    def snapshot_(self, owners: list[Tensor], model: nn.Module, *, foreach: bool) -> None:
        """Before the step that a stage follows: copy ``W_{n-1}`` of ``owners`` into ``delta``.

        Raises:
            RuntimeError: an owner is not a parameter of ``model`` (checked when they change).
        """
        params = [_local_shard(p) for p in owners]
        # model.to(...) changes a parameter's device or dtype in place: identity is not enough.
        layout = [(p.shape, p.dtype, p.device) for p in params]
        if layout != self._layout or not _same_tensors(owners, self.owners):
            _check_owned_by(owners, model)
            self.owners, self._layout = owners, layout
            self.anchor = [torch.empty_like(p) for p in params]
            self.delta = [torch.empty_like(p) for p in params]
        self.params = params
        _copy_(self.delta, params, foreach=foreach)

    @torch.no_grad()
    def reverse_(self, *, foreach: bool) -> float:
        """After the step: turn the snapshot into ``-Δ`` in place; its largest ``|x|`` here.

        0.0 if Δ is all zero, NaN or inf if it is not finite.
        """
        _reversed_delta_from_snapshot_(self.delta, self.params, foreach=foreach)
        return _max_abs(self.delta)


def _same_tensors(tensors: list[Tensor], others: list[Tensor]) -> bool:
    """Whether the two lists hold the same tensor objects, in the same order."""
    return len(tensors) == len(others) and all(t is o for t, o in zip(tensors, others, strict=True))
