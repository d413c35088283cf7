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

from fastforward._checks import _check_movable
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
        anchor: ``W_n`` during a stage; allocated by :meth:`stage_anchor`, at the first stage,
            so that a snapshot held through an interval is the only copy until then.
        delta: The snapshot of ``W`` from :meth:`snapshot_` to :meth:`reverse_`, then ``-Δ``.
        taken_at: The optimizer step before which the snapshot was taken, while it is held
            (``None`` before the first, after :meth:`reverse_` or :meth:`free`).
    """

    def __init__(self) -> None:
        self.free()

    def free(self) -> None:
        self.owners: list[Tensor] = []
        self.params: list[Tensor] = []
        self.anchor: list[Tensor] = []
        self.delta: list[Tensor] = []
        self.taken_at: int | None = None
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []

    @torch.no_grad()
    def snapshot_(
        self, owners: list[Tensor], model: nn.Module, step: int, *, foreach: bool
    ) -> None:
        """Before optimizer step ``step``: copy ``W`` of ``owners`` into ``delta``.

        Raises:
            RuntimeError: an owner is not a parameter of ``model`` (checked when they change).
        """
        self._fit(owners, model)
        _copy_(self.delta, self.params, foreach=foreach)
        self.taken_at = step

    def holds_snapshot(self, owners: list[Tensor], step: int) -> bool:
        """Whether ``delta`` holds a snapshot of ``owners`` as they are, taken before ``step``."""
        return self.taken_at == step and self._laid_out_for(
            owners, [_local_shard(p) for p in owners]
        )

    @torch.no_grad()
    def restore_(
        self, owners: list[Tensor], model: nn.Module, step: int, saved: list[Tensor]
    ) -> None:
        """Load a snapshot that :meth:`snapshot_` took before ``step`` (from a checkpoint).

        Raises:
            ValueError: ``saved`` does not match the local shards of ``owners`` one to one in
                shape and dtype; nothing is changed then.
        """
        check_restorable(owners, saved)
        self._fit(owners, model)
        for d, s in zip(self.delta, saved, strict=True):
            d.copy_(s)  # to the parameter's device, bit for bit
        self.taken_at = step

    @torch.no_grad()
    def reverse_(self, *, foreach: bool) -> float:
        """After the step: turn the snapshot into ``-Δ`` in place; its largest ``|x|`` here.

        0.0 if Δ is all zero, NaN or inf if it is not finite.
        """
        self.taken_at = None
        _reversed_delta_from_snapshot_(self.delta, self.params, foreach=foreach)
        return _max_abs(self.delta)

    def stage_anchor(self) -> list[Tensor]:
        """The ``anchor`` buffers for a stage on ``params``, allocated if they are not yet."""
        if len(self.anchor) != len(self.params):
            self.anchor = [torch.empty_like(p) for p in self.params]
        return self.anchor

    def _fit(self, owners: list[Tensor], model: nn.Module) -> None:
        """Point the buffers at ``owners``; reallocate ``delta`` if their layout changed."""
        params = [_local_shard(p) for p in owners]
        if not self._laid_out_for(owners, params):
            _check_movable(owners, model)
            self.owners, self._layout = owners, _layout(params)
            self.anchor = []
            self.delta = [torch.empty_like(p) for p in params]
        self.params = params

    def _laid_out_for(self, owners: list[Tensor], params: list[Tensor]) -> bool:
        """Whether the buffers were allocated for ``owners`` with shards ``params`` as they are."""
        # model.to(...) changes a parameter's device or dtype in place: identity is not enough.
        return _layout(params) == self._layout and _same_tensors(owners, self.owners)


def check_restorable(owners: list[Tensor], saved: list[Tensor]) -> None:
    """Raise ``ValueError`` unless ``saved[i]`` has the shape and dtype of ``owners[i]``'s shard."""
    params = [_local_shard(p) for p in owners]
    if len(saved) != len(params):
        raise ValueError(
            f"fastforward: the checkpoint's interval_snapshot holds {len(saved)} tensors for "
            f"{len(params)} trainable parameters"
        )
    for i, (s, p) in enumerate(zip(saved, params, strict=True)):
        if s.shape != p.shape or s.dtype != p.dtype:
            raise ValueError(
                f"fastforward: the checkpoint's interval_snapshot[{i}] is a {s.dtype} tensor "
                f"of shape {tuple(s.shape)}; its parameter is {p.dtype} {tuple(p.shape)}"
            )


def _layout(params: list[Tensor]) -> list[tuple[torch.Size, torch.dtype, torch.device]]:
    return [(p.shape, p.dtype, p.device) for p in params]


def _same_tensors(tensors: list[Tensor], others: list[Tensor]) -> bool:
    """Whether the two lists hold the same tensor objects, in the same order."""
    return len(tensors) == len(others) and all(t is o for t, o in zip(tensors, others, strict=True))
