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
the state that ``dcp.load`` gave it, and logs a warning that says so.
"""

from __future__ import annotations

import json
from typing import Any

from fastforward.wrapper import FastForward


class WrapperState:
    """A DCP ``Stateful`` holding ``ff.wrapper_state_dict()`` as one opaque entry.

    DCP flattens nested dicts and lists into keys and needs the same keys at load as at save;
    the stage history grows with training, so the state travels as one JSON string instead.
    DCP stores one rank's copy of it: counters and decisions agree on every rank, so only
    the timings (``stage_seconds``, ``seconds``) come from that one rank after a resume.

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
        """``{"json": <ff.wrapper_state_dict() as JSON>}``: what DCP saves.

        Without ``delta_span="interval"``'s snapshot (tensors): resumed inside an interval,
        the wrapper skips that interval's stage, and says so in the log.
        """
        state = self.ff.wrapper_state_dict()
        state.pop("interval_snapshot", None)
        return {"json": json.dumps(state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned into the wrapper (``load_wrapper_state_dict``)."""
        self.ff.load_wrapper_state_dict(json.loads(state_dict["json"]))
