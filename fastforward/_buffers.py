"""The two buffers of a stage: the snapshot of ``W_{n-1}`` that becomes ``-Δ``, and ``W_n``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastforward._checks import _check_owned_by
from fastforward._distributed import _local_shard
from fastforward._kernels import _copy_, _max_abs, _reversed_delta_from_snapshot_


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
