"""Hugging Face ``transformers.Trainer`` support: log Fast Forward's counters with the metrics.

Requires ``transformers`` (``pip install 'fastforward-lora[peft]'``). Usage::

    adamw = torch.optim.AdamW(lora_params, lr=4e-5)
    ff = FastForward(adamw, model, validation_closure(model, [val_batch]))
    scheduler = transformers.get_linear_schedule_with_warmup(ff, 10, total_steps)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   optimizers=(ff, scheduler))
    fastforward.hf.attach(trainer)  # the ff/* counters in every log entry, trackers included
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastforward.hf needs transformers: pip install 'fastforward-lora[peft]'"
    ) from missing

from fastforward.wrapper import FastForward


class FastForwardCallback(TrainerCallback):
    """Add ``ff/*`` counters to every Trainer log entry (console, ``log_history``, trackers).

    Register it with :func:`attach`: passed as ``Trainer(callbacks=[...])`` it runs after the
    reporting callbacks, and the trackers never see the counters.

    Args:
        ff: The wrapper passed to ``Trainer(optimizers=(ff, scheduler))``, or an object that
            holds it as ``.optimizer`` (accelerate's ``AcceleratedOptimizer`` after ``prepare``).

    Raises:
        TypeError: ``ff`` is neither.
    """

    def __init__(self, ff: FastForward) -> None:
        inner = getattr(ff, "optimizer", None)
        if not isinstance(ff, FastForward) and isinstance(inner, FastForward):
            ff = inner
        if not isinstance(ff, FastForward):
            raise TypeError(
                f"fastforward: FastForwardCallback needs the FastForward wrapper, got "
                f"{type(ff).__name__}"
            )
        self.ff = ff

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called by the Trainer after it logs; adds the counters to that entry."""
        if logs is None:
            return
        stats = self.ff.stats
        counters: dict[str, float] = {
            "ff/stages": stats.stages,
            "ff/simulated_steps": stats.simulated_steps,
            "ff/evaluations": stats.evaluations,
            "ff/stage_seconds": round(stats.stage_seconds, 3),
            "ff/active": int(self.ff.active),
            "ff/interval": self.ff.current_interval,
        }
        payoff = next((r.payoff for r in reversed(stats.history) if r.payoff is not None), None)
        if payoff is not None:  # cost_aware: the last stage's payoff, and whether it stepped aside
            counters["ff/payoff"] = round(payoff, 4)
            counters["ff/stepped_aside"] = int(stats.gave_up_because == "payoff")
        logs.update(counters)
        # Trainer appended this entry to log_history before calling us.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(counters)


def attach(trainer: Any, ff: FastForward | None = None) -> FastForwardCallback:
    """Register a :class:`FastForwardCallback` as ``trainer``'s first callback; return it.

    Trainer calls its callbacks in order and puts the reporting ones (``report_to``:
    TensorBoard, W&B, MLflow, ...) before those passed as ``callbacks=``, so a callback passed
    there adds its counters after the trackers have logged the entry. First in line, the
    counters reach every tracker, the console and ``log_history``. A ``FastForwardCallback``
    already registered is replaced.

    Args:
        trainer: A ``transformers.Trainer``.
        ff: The wrapper; default: ``trainer.optimizer`` (as passed in ``optimizers=``).

    Raises:
        TypeError: no FastForward wrapper is given or is ``trainer.optimizer``.
    """
    callback = FastForwardCallback(trainer.optimizer if ff is None else ff)
    while trainer.pop_callback(FastForwardCallback) is not None:
        pass
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
