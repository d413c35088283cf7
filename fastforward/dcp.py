"""``torch.distributed.checkpoint`` (DCP) support: the wrapper's own state as one checkpoint entry.

DCP's optimizer helpers (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``, the way to
checkpoint FSDP2) keep only an optimizer's ``state`` and ``param_groups``, so the wrapper's
counters, give-up state and stage history would be lost. Save them beside the optimizer::

    from fastforward.dcp import WrapperState

    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, ff),
        "fastforward": WrapperState(ff),
    }
    dcp.save(state, checkpoint_id=path)
    ...  # to resume, build the same dict around the new model and wrapper, then:
    dcp.load(state, checkpoint_id=path)  # loads the wrapper state into the new wrapper
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, ff, state["optim"])  # after dcp.load: see below

``set_optimizer_state_dict`` then loads a dict without the wrapper's entry: the wrapper keeps
the state that ``dcp.load`` gave it, and logs a warning that says so. With
``delta_span="interval"`` the interval's snapshot of ``W`` is saved too, so that a resume inside
an interval is bitwise the uninterrupted run.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import Tensor

from fastforward._distributed import _local_shard
from fastforward.wrapper import FastForward

SNAPSHOT = "interval_snapshot"


class WrapperState:
    """A DCP ``Stateful`` holding ``ff.wrapper_state_dict()``: one JSON entry, and tensors.

    DCP flattens nested dicts and lists into keys and needs the same keys at load as at save;
    the stage history grows with training, so the counters travel as one JSON string. DCP
    stores one rank's copy of it: counters and decisions agree on every rank, so only the
    timings (``stage_seconds``, ``seconds``) come from that one rank after a resume.

    With ``delta_span="interval"`` the interval's snapshot of ``W`` travels as tensors, one per
    trainable parameter, sharded like it (a ``DTensor`` under FSDP2), so that a DCP resume
    inside an interval is bitwise the uninterrupted run, as with ``torch.save``. They are
    always there in that mode (zeros when no snapshot is held, e.g. right after a stage), so
    that a fresh wrapper offers DCP the same keys to load into as the one that saved.

    Args:
        ff: The wrapper whose state is saved, or loaded into.
    """

    def __init__(self, ff: FastForward) -> None:
        if not isinstance(ff, FastForward):
            raise TypeError(
                f"fastforward: WrapperState needs a FastForward, got {type(ff).__name__}"
            )
        self.ff = ff

    def state_dict(self) -> dict[str, Any]:
        """``{"json": <the entry as JSON>}``, and with ``delta_span="interval"`` the snapshot.

        The snapshot's tensors are the live buffers when one is held; the step it was taken
        before is in the JSON (``"interval_snapshot_step"``).
        """
        state = self.ff.wrapper_state_dict()
        snapshot = state.pop(SNAPSHOT, None)
        if self.ff.config.delta_span != "interval":
            return {"json": json.dumps(state)}
        owners = self.ff._trainable_params()
        if snapshot is None:
            shards = [torch.zeros_like(_local_shard(p)) for p in owners]
        else:
            state[f"{SNAPSHOT}_step"] = snapshot["step"]
            shards = snapshot["tensors"]
        tensors = [_sharded_like(p, shard) for p, shard in zip(owners, shards, strict=True)]
        return {"json": json.dumps(state), SNAPSHOT: tensors}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned into the wrapper (``load_wrapper_state_dict``).

        Raises:
            ValueError: the entry is malformed, or its snapshot does not fit the wrapper's
                trainable parameters; nothing is changed then.
        """
        state = json.loads(state_dict["json"])
        step = state.pop(f"{SNAPSHOT}_step", None)
        if step is not None:
            tensors = [_local_shard(t) for t in state_dict.get(SNAPSHOT, [])]
            state[SNAPSHOT] = {"step": step, "tensors": tensors}
        self.ff.load_wrapper_state_dict(state)


def _sharded_like(param: Tensor, shard: Tensor) -> Tensor:
    """``shard`` as a ``DTensor`` placed like ``param`` if that is one, else ``shard``."""
    module = sys.modules.get("torch.distributed.tensor")  # loaded once a DTensor can exist
    kind = getattr(module, "DTensor", None)
    if kind is None or not isinstance(param, kind):
        return shard
    placed: Any = param
    return kind.from_local(  # type: ignore[no-any-return]
        shard, placed.device_mesh, placed.placements, shape=placed.shape, stride=placed.stride()
    )
