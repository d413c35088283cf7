"""The :class:`FastForward` optimizer wrapper: the schedule around the stage of ``_stage.py``."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fastforward import _logs, _payoff
from fastforward._checkpoint import WRAPPER, WrapperState
from fastforward._checks import (
    _check_bool,
    _check_closure_signature,
    _check_kinds,
    _check_movable,
    _checked_loss,
    _refuse_deferred_parameter_updates,
    _refuse_flat_parameter_sharding,
)
from fastforward._config import Config, Schedule
from fastforward._distributed import (
    _check_process_group,
    _collective_device,
    _max_across_ranks,
    _mean_across_ranks,
    _reshard_fsdp_modules,
)
from fastforward._docs import shares_args
from fastforward._kernels import StageBuffers, check_restorable
from fastforward._logs import (
    StageProgress,
    log,
    log_no_wrapper_entry,
    log_out_of_patience,
    log_settings_replaced,
    log_stage,
    log_stepped_aside,
)
from fastforward._modes import _eval_mode
from fastforward._payoff import CostAwareRule, TrainingClock, synchronize
from fastforward._search import DEFAULT_SEARCH, SearchStrategy
from fastforward._sharing import BaseStepGuard, SharedContainer, supersede_other_wrappers
from fastforward._stage import DEFAULT_MIN_IMPROVEMENT, run_stage
from fastforward._stats import FastForwardStats, StageRecord

ValClosure = Callable[..., "float | Tensor"]
StageCallback = Callable[[StageRecord], None]


@shares_args
class FastForward(Optimizer):
    r"""Wrap an optimizer; every ``interval`` steps, repeat its last step while that helps.

    Fast Forward (Rahamim et al., 2024) alternates ordinary optimizer steps with *stages*: after
    step ``n`` with ``n > warmup`` and ``(n - warmup) % interval == 0``, it runs
    :func:`~fastforward.fast_forward_stage` along the update of every trainable parameter over
    the interval (the paper's last step with ``delta_span="step"``), judged by the loss on a
    tiny validation set:

    .. math::

        \Delta = W_n - W_{n-\text{interval}}, \qquad
        L_\tau = \mathcal{L}_{val}(W_n + \tau\Delta), \quad \tau = 0, 1, 2, \dots

    The parameters are left **bitwise** at the best point evaluated, also when ``val_closure``
    raises (the exception propagates after the rollback). Stages never touch the wrapped
    optimizer's state, gradients or learning rates; a step whose ``Δ`` is all zero or not finite
    (skipped by a ``GradScaler``) runs none. After the first stage that bought less validation
    loss than training would have with its compute (``cost_aware``), or after ``patience``
    stages in a row that accepted ``τ = 0`` (paper §5.1), Fast Forward is off for good: the
    wrapper is the bare optimizer.

    The wrapper *is* a :class:`torch.optim.Optimizer` sharing ``param_groups``, ``state`` and
    ``defaults`` with the wrapped one (the same objects), so LR schedulers, gradient clipping and
    ``torch.amp.GradScaler`` work through it; each stage moves the tensors of ``param_groups``
    that require grad then. The hyperparameters are read-only attributes, all in :attr:`config`.

    Args:
        optimizer: The optimizer to wrap, e.g. ``torch.optim.AdamW(lora_params, lr=4e-5)``.
        model: The module being trained. Stages put it in ``eval()`` mode while they evaluate and
            restore every submodule's mode afterwards.
        val_closure: Required. A callable taking no argument that returns the loss on the tiny
            validation set (the paper uses 32 examples) as a Python number or a 0-dim tensor.
            Called under ``torch.no_grad()`` in eval mode; it must not change the parameters
            nor step the optimizer. If it (or an ``nn.Module``'s ``forward``) accepts a keyword
            ``stage``, it is called as ``val_closure(stage=k)`` in the k-th stage (from 0), to
            rotate through held-out subsets (see :func:`~fastforward.validation_closure`).
        interval: Optimizer steps between stages (default: 6, as in the paper).
        warmup: Optimizer steps before the schedule starts (default: 0).
        max_tau: {shared}
        max_tau_ratio: If given, a stage simulates at most
            ``max(1, floor(max_tau_ratio * interval))`` steps (the current interval): no stage
            jumps further than that many intervals' worth of steps on the word of the tiny
            validation set. τ is capped at that many steps, or with ``delta_span="interval"``
            at as many whole intervals as fit in them, which needs ``max_tau_ratio >= 1``
            (default: ``None``).
        adaptive_interval: ``(shortest, longest)``: the interval halves after a stage that
            accepted ``τ >= interval`` and doubles after one with ``τ <= 1``, within these
            bounds (``docs/algorithm.md``; default: ``None``, every ``interval`` steps).
        patience: Stages in a row that accepted ``τ = 0`` before Fast Forward gives up for
            good; ``None`` never gives up (default: 3, as in the paper).
        search: {shared}
            A checkpoint records a callable by name (``module.qualname``; a
            ``functools.partial`` with its arguments): the wrapper that loads it must be given
            the same callable, so prefer a module-level function to a lambda.
        min_improvement: {shared}
        delta_span: ``"interval"``: Δ is the whole interval's update, ``W_n - W_{n-interval}``
            (from where the previous stage landed), and τ counts intervals: it averages the
            steps' minibatch noise. The snapshot of ``W`` is then held through the interval and
            saved in ``state_dict()``; a stage whose interval began before ``enabled`` was set,
            or before a checkpoint without it was loaded, is skipped. Not with
            ``adaptive_interval``. ``"step"``: Δ is the last step's update, as in the paper
            (default: ``"interval"``, chosen by ``docs/results.md``, "Choosing the default").
        cost_aware: Step aside (off for good) after the first stage that bought less validation
            loss than training would have with the same compute, at the fastest pace training
            has shown; each stage's ratio of the two is ``StageRecord.payoff``
            (``docs/algorithm.md``). The pace before the first stage is measured from one more
            validation pass: with ``delta_span="interval"``, at ``W_n - Δ`` (the interval's
            start) and only if that stage gained, so that a first stage that gains nothing
            costs its search alone; with ``"step"``, before the interval. It compares losses
            across stages, so ``val_closure`` must evaluate the same data every call: ``True``
            with a closure that takes ``stage`` is refused, unless its attribute ``rotates`` is
            false (as :func:`~fastforward.validation_closure`'s is without ``rotate``)
            (default: ``None``, on unless ``val_closure`` rotates).
        cost_ratio: With ``cost_aware``, a validation pass's cost in training steps (e.g. the
            ratio of their FLOPs): pass it for decisions that do not depend on the machine's
            timings. ``None`` measures it from wall time, the device synchronised where each
            block of validation passes starts and ends, averaged over the ranks of
            ``process_group`` (default: ``None``).
        enabled: ``False`` turns stages off: the wrapper is then bitwise the bare optimizer. May be
            changed between steps through the attribute of the same name (default: ``True``).
        on_stage: Called with the :class:`StageRecord` of every stage that ran (default: ``None``).
        foreach: {shared}
        keep_buffers: Keep the two stage buffers between stages (default: ``True``); ``False``
            frees them after each stage, for full-rank training (see the memory note).
        process_group: Under ``torch.distributed``, the validation loss is averaged and the size
            of Δ maximised over this group (``None``: the default group), so every rank accepts
            the same τ; all ranks must step together, as under DDP and FSDP (default: ``None``).

    Example:
        >>> import torch
        >>> from fastforward import FastForward
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(4, 1)
        >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
        >>> loss_fn = lambda: torch.nn.functional.mse_loss(model(x), y)
        >>> adam = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> ff = FastForward(adam, model, val_closure=loss_fn, interval=6)
        >>> for _ in range(12):
        ...     loss_fn().backward()
        ...     ff.step()
        ...     ff.zero_grad()
        >>> ff.stats.optimizer_steps, ff.stats.stages
        (12, 2)

    References:
        Rahamim, Saphra, Kangaslahti, Belinkov. *Fast Forwarding Low-Rank Training.* EMNLP 2024.

    .. note::
        Memory: two copies of the trainable parameters (``W_n`` and ``Δ``) from the first stage
        until Fast Forward is off (with ``delta_span="interval"``, one from the first
        interval's start): a few MB with LoRA. With ``keep_buffers=False``, none between
        stages (``delta_span="interval"``: one through each interval, the second during the
        stage alone), for full rank.

    .. warning::
        Fast Forward helps low-rank finetuning (LoRA, DoRA). On full-rank training the paper finds
        that even ``τ = 1`` usually increases the loss; the give-up rule then turns it off.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        val_closure: ValClosure | None = None,
        interval: int = 6,
        *,
        warmup: int = 0,
        max_tau: int = 1000,
        max_tau_ratio: float | None = None,
        adaptive_interval: tuple[int, int] | None = None,
        patience: int | None = 3,
        search: str | SearchStrategy = DEFAULT_SEARCH,
        min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
        delta_span: str = "interval",
        cost_aware: bool | None = None,
        cost_ratio: float | None = None,
        enabled: bool = True,
        on_stage: StageCallback | None = None,
        foreach: bool | None = None,
        keep_buffers: bool = True,
        process_group: Any = None,
    ) -> None:
        if isinstance(optimizer, FastForward):
            raise TypeError(
                "fastforward: optimizer is already a FastForward; wrap the bare optimizer"
            )
        _check_kinds(optimizer, model, val_closure, on_stage)
        assert val_closure is not None  # for mypy: _check_kinds refuses None
        enabled = _check_bool("enabled", enabled)
        foreach = True if foreach is None else _check_bool("foreach", foreach)
        keep_buffers = _check_bool("keep_buffers", keep_buffers)
        process_group = _check_process_group(process_group)
        _refuse_deferred_parameter_updates(optimizer)
        _refuse_flat_parameter_sharding(model)
        self._closure_takes_stage = _check_closure_signature(val_closure)
        rotates = getattr(val_closure, "rotates", self._closure_takes_stage)
        if cost_aware is None:  # the default: on, unless the validation data may change
            cost_aware = not rotates
        config = Config(  # the hyperparameters, checked: the fields in the signature's order
            *(interval, warmup, max_tau, max_tau_ratio, adaptive_interval, patience, search),
            *(min_improvement, delta_span, cost_aware, cost_ratio),
        )
        if config.cost_aware and rotates:
            raise ValueError(
                "fastforward: cost_aware=True compares validation losses from stage to stage, "
                "but val_closure takes `stage` (it may rotate the validation data, e.g. "
                "validation_closure(..., rotate=k)), so they could come from different data; "
                "pass a val_closure without `stage`, or cost_aware=False"
            )
        # Optimizer.__init__ sets up hooks and profiling; it gets copies of the group dicts and
        # builds containers of its own, which are dropped once `optimizer` is set (see below)
        # (listed once each: torch warned about duplicates when the optimizer was built).
        groups = [
            {**group, "params": list(dict.fromkeys(group["params"]))}
            for group in optimizer.param_groups
        ]
        super().__init__(groups, optimizer.defaults)
        self.optimizer = optimizer
        for name in ("param_groups", "state", "defaults"):
            del self.__dict__[f"_init_{name}"]
        trainable = self._trainable_params()
        if not trainable:
            raise ValueError(
                "fastforward: optimizer has no parameter with requires_grad=True; "
                "pass the optimizer of the trainable (e.g. LoRA) parameters"
            )
        _check_movable(trainable, model)
        self.model, self.val_closure, self.on_stage = model, val_closure, on_stage
        self._closure_rotates = rotates
        self.config = config
        self._schedule = Schedule.start(config)
        self._buffers = StageBuffers()
        self.enabled = enabled
        self.foreach, self.keep_buffers, self.process_group = foreach, keep_buffers, process_group
        self.stats = FastForwardStats()
        self._cost = CostAwareRule(config.cost_ratio)
        self._in_stage = False  # a stage is running: step() and the wrapped step must not
        self._stepping = False  # inside step(): the wrapped optimizer's step is ours
        self._warned_direct_step = False
        # load_wrapper_state_dict() ran and no step since: a base state loaded now (DCP's
        # set_optimizer_state_dict, after WrapperState) lacks the entry by design.
        self._wrapper_state_just_loaded = False
        self._progress = StageProgress(0.0, next_report=_logs.PROGRESS_SECONDS)
        self._superseded = False
        supersede_other_wrappers(optimizer, self)  # once nothing above can fail
        self._guard_base_steps()
        _run_stages_eagerly()

    # The wrapped optimizer's containers, read on every access: the wrapper never holds a copy
    # that could go stale (the wrapped optimizer's own load_state_dict replaces them).
    param_groups = SharedContainer()
    state = SharedContainer()
    defaults = SharedContainer()

    @property
    def enabled(self) -> bool:
        """Whether stages may run; may be changed between steps.

        ``False`` makes the wrapper bitwise the bare optimizer and frees the stage buffers.
        """
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = _check_bool("enabled", value)
        if not self._enabled:
            self._free_buffers()

    @property
    def active(self) -> bool:
        """Whether stages will still run: enabled and not given up."""
        return self._enabled and not self._schedule.gave_up

    @property
    def current_interval(self) -> int:
        """Optimizer steps from the last scheduled stage to the next one."""
        return self._schedule.interval_now

    def __repr__(self) -> str:
        return f"FastForward({self.config.arguments()}, active={self.active},\n{self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups: copies would lose us.
        # Methods patched on the instance (an LR scheduler wraps `step` this way) hold the
        # original wrapper: a copy keeps the class's own, as a torch optimizer's copy does.
        return {
            name: value
            for name, value in self.__dict__.items()
            if not callable(getattr(type(self), name, None))
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # The wrapped optimizer's own __getstate__ dropped its hooks, our guard among them; a
        # copy of a replaced wrapper stays replaced and guards nothing.
        if not self.__dict__.get("_superseded"):
            self._guard_base_steps()

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one step of the wrapped optimizer, then a Fast Forward stage if one is due.

        Args:
            closure: Passed to the wrapped optimizer's ``step`` exactly once, as it is. It is the
                training closure; stages use ``val_closure`` instead.

        Returns:
            What the wrapped optimizer's ``step`` returned (the closure's loss, if given).
        """
        self._refuse_during_stage("step()")
        self._wrapper_state_just_loaded = False
        step = self.stats.optimizer_steps + 1
        if step > self.config.warmup:  # the first step (warmup 0), or a wrapper just loaded
            self._measure_reference_if_missing(step - 1)
        stage_due = self.active and self._schedule.due(step, self.config)
        if self.active and self._schedule.snapshot_due(step, self.config):
            self._snapshot_(step)
        self._stepping = True
        try:
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        finally:
            self._stepping = False
        self.stats.optimizer_steps = step
        if stage_due:
            self._schedule.last_scheduled_step = step
            try:
                unmovable = self._why_unmovable(step)
                if unmovable is None:
                    self._stage()
                else:
                    self._skip_stage(step, unmovable, logging.INFO)
            finally:
                if not self.keep_buffers:
                    self._free_buffers()
        if step >= self.config.warmup:  # after the step: the next one is the first that counts
            self._measure_reference_if_missing(step)
        if self._times_training() and not self._cost.clock.running:
            # Whole iterations from here: after the first step, a validation block, or a load.
            self._synchronize()
            self._cost.clock.start(step)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Delegate to the wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer; later stages move its trainable tensors too."""
        if "optimizer" not in self.__dict__:
            # Called by Optimizer.__init__ on our private copies of the base's groups.
            super().add_param_group(param_group)
            return
        self._refuse_during_stage("add_param_group()")
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, Tensor):
            listed = [params]
        elif params is None or isinstance(params, set):  # the wrapped optimizer says why
            listed = []
        else:  # any other iterable, read once: as torch does, the caller's dict gets the list
            listed = param_group["params"] = list(params)
        tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in listed]  # names
        trains = [p for p in tensors if isinstance(p, Tensor) and p.requires_grad]
        _check_movable(trains, self.model, "the new group's")  # before the optimizer holds them
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict()`` plus one entry with the wrapper's own state.

        The extra entry, ``"fastforward"`` (:meth:`wrapper_state_dict`), holds the counters, the
        schedule, the hyperparameters and the stage history as plain dicts, lists and numbers,
        so the result loads with ``torch.load(..., weights_only=True)``. The stage buffers are
        not saved: they are refilled before each stage, so a checkpoint taken between steps
        resumes bitwise. With ``delta_span="interval"``, a checkpoint inside an interval also
        holds the snapshot of ``W`` taken at its start (``"interval_snapshot"``: tensors, this
        rank's shards under FSDP2), which, like the tensors of a torch optimizer's own
        ``state_dict()``, are the live buffers, not copies.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        state_dict[WRAPPER] = self.wrapper_state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hooked = post_hook(self, state_dict)
            if hooked is not None:
                state_dict = hooked
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (the caller's dict is not modified).

        Also accepts a bare ``state_dict()`` of the wrapped optimizer's class, as when Fast
        Forward is added to a run midway, or as ``torch.distributed.checkpoint`` returns it;
        the wrapper then keeps its own counters and says so in a warning (see
        :meth:`wrapper_state_dict` to checkpoint them separately), unless
        :meth:`load_wrapper_state_dict` loaded them since the last step (as
        ``fastforward.dcp.WrapperState`` does inside ``torch.distributed.checkpoint.load``).

        The entry's settings (every field of ``config``, and ``enabled``) replace those the
        wrapper was built with, as a torch optimizer's saved ``param_groups`` replace its
        learning rates, so that the run goes on as it was saved; a WARNING names each one
        that differs. To keep the wrapper's own, load the dict without its ``"fastforward"``
        entry (the wrapper then keeps its own counters too: a new one counts from step 0).

        Raises:
            ValueError: the ``"fastforward"`` entry is malformed, or was saved with
                ``cost_aware=True`` while this wrapper's ``val_closure`` may rotate its data
                (the constructor's rule); nothing is loaded then.
        """
        self._refuse_during_stage("load_state_dict()")
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hooked = pre_hook(self, state_dict)
            if hooked is not None:
                state_dict = hooked
        base_state = dict(state_dict)
        saved = base_state.pop(WRAPPER, None)
        # Checked before anything is loaded, so that a rejected dict changes nothing.
        parsed = None if saved is None else self._parsed_wrapper_state(saved)
        self.optimizer.load_state_dict(base_state)
        if parsed is None:
            if not self._wrapper_state_just_loaded:
                log_no_wrapper_entry(self.process_group, WRAPPER, self.stats, self.active)
        else:
            self._set_wrapper_state(parsed)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def wrapper_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state alone: the ``"fastforward"`` entry of :meth:`state_dict`.

        For checkpoint tools that keep only ``state`` and ``param_groups`` of an optimizer: save
        this dict beside theirs and give it to :meth:`load_wrapper_state_dict` after theirs is
        loaded (for ``torch.distributed.checkpoint``, ``fastforward.dcp.WrapperState`` does
        both). Plain dicts, lists and numbers, the same on every rank but for the timings; and
        with ``delta_span="interval"`` the interval's snapshot (see :meth:`state_dict`).
        """
        snapshot = None
        taken_at = self._buffers.taken_at
        # Only a finished step's (taken before a step that raised, it will be taken again), and
        # only while it fits the trainable tensors as they are: after `requires_grad` changed or
        # `add_param_group`, its stage is skipped, in this run and in a resumed one alike.
        if (
            self.config.delta_span == "interval"
            and taken_at is not None
            and taken_at <= self.stats.optimizer_steps
            and self._buffers.holds_snapshot(self._trainable_params(), taken_at)
        ):
            snapshot = (taken_at, self._buffers.delta)
        clock = self._cost.clock
        timed = (clock.seconds, clock.steps) if self.config.cost_aware else None
        peak_pace = self._cost.peak_pace if self.config.cost_aware else None
        state = WrapperState(
            self.config, self._schedule, self.enabled, self._cost.reference, self.stats, snapshot,
            timed, peak_pace,
        )  # fmt: skip
        return state.to_dict()

    def load_wrapper_state_dict(self, state: dict[str, Any]) -> None:
        """Load a dict from :meth:`wrapper_state_dict`; the wrapped optimizer is not touched.

        Its settings replace the wrapper's, as in :meth:`load_state_dict`.

        Raises:
            ValueError: ``state`` is malformed or breaks the constructor's rules (see
                :meth:`load_state_dict`); nothing is changed then.
        """
        self._refuse_during_stage("load_wrapper_state_dict()")
        self._set_wrapper_state(self._parsed_wrapper_state(state))
        self._wrapper_state_just_loaded = True

    def _parsed_wrapper_state(self, saved: object) -> WrapperState:
        """The checked entry, nothing loaded yet.

        ``ValueError`` if it is malformed or breaks a rule of the constructor.
        """
        parsed = WrapperState.from_dict(saved, self.config.search)
        if parsed.config.cost_aware and self._closure_rotates:
            raise ValueError(
                "fastforward: the state_dict was saved with cost_aware=True, but this "
                "wrapper's val_closure may rotate the validation data (it takes `stage`, and "
                "no `rotates` attribute says otherwise), so its losses could come from "
                "different data; load it into a wrapper whose val_closure does not rotate"
            )
        if parsed.snapshot is not None:
            check_restorable(self._trainable_params(), parsed.snapshot[1])
        return parsed

    def _set_wrapper_state(self, saved: WrapperState) -> None:
        replaced = self.config.changes_to(saved.config)
        if saved.enabled != self.enabled:
            replaced["enabled"] = (self.enabled, saved.enabled)
        if replaced:
            log_settings_replaced(self.process_group, replaced)
        self.config, self._schedule, self.stats = saved.config, saved.schedule, saved.stats
        # The saved clock goes on; its running segment does not (timed again from the next step).
        clock = TrainingClock(*saved.training_clock) if saved.training_clock else TrainingClock()
        self._cost = CostAwareRule(
            saved.config.cost_ratio, saved.reference, clock, saved.peak_pace or 0.0
        )
        self.enabled = saved.enabled
        if self._schedule.gave_up:
            self._free_buffers()
        elif saved.snapshot is not None and self.enabled:
            step, tensors = saved.snapshot
            self._buffers.restore_(self._trainable_params(), self.model, step, tensors)
        else:  # what the buffers hold belongs to the run before the load
            self._buffers.taken_at = None

    def _trainable_params(self) -> list[Tensor]:
        """The tensors a stage moves: trainable, each once (by identity), in group order."""
        distinct: dict[int, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    distinct.setdefault(id(p), p)
        return list(distinct.values())

    def _supersede(self) -> None:
        """Another wrapper of the same optimizer was built: refuse to change anything from now."""
        self._superseded = True
        self._free_buffers()

    def _refuse_during_stage(self, what: str) -> None:
        if self.__dict__.get("_superseded"):
            raise RuntimeError(
                f"fastforward: {what} was called on a FastForward that a newer FastForward of "
                "the same optimizer replaced; use the newer one"
            )
        if self.__dict__.get("_in_stage"):
            raise RuntimeError(
                f"fastforward: {what} was called during a Fast Forward stage (from val_closure?); "
                "a stage must finish before the optimizer changes"
            )

    def _guard_base_steps(self) -> None:
        """Hook the wrapped optimizer's step: refused during a stage, a warning if not ours."""
        hooks = self.optimizer._optimizer_step_pre_hooks
        if not any(isinstance(h, BaseStepGuard) and h.wrapper() is self for h in hooks.values()):
            self.optimizer.register_step_pre_hook(BaseStepGuard(self))

    def _before_base_step(self) -> None:
        self._refuse_during_stage(f"{type(self.optimizer).__name__}.step()")
        if self._stepping or not self.active or self._warned_direct_step:
            return
        self._warned_direct_step = True
        warnings.warn(
            f"fastforward: {type(self.optimizer).__name__}.step() was called on the wrapped "
            "optimizer directly, so no Fast Forward stage runs and the schedule does not count "
            "the step; call step() on the FastForward wrapper instead",
            stacklevel=4,
        )

    def _free_buffers(self) -> None:
        self._buffers.free()

    def _snapshot_(self, step: int) -> None:
        """Before optimizer step ``step``: copy ``W`` into the Δ buffers, if any tensor trains.

        That ``W`` is ``W_{n-1}``, or with ``delta_span="interval"`` the interval's first.
        """
        owners = self._trainable_params()
        if owners:
            self._buffers.snapshot_(owners, self.model, step, foreach=self.foreach)

    def _why_unmovable(self, step: int) -> str | None:
        """After due step ``step``: why no stage can run, or None if the snapshot is Δ's start."""
        owners = self._trainable_params()
        if not owners:
            return "no parameter requires grad"
        if self._buffers.holds_snapshot(owners, step - self.config.delta_steps + 1):
            return None
        if self._buffers.taken_at is not None:
            return "the trainable parameters changed since the interval began"
        return (
            "no snapshot of W from the start of the interval (Fast Forward was enabled, or a "
            "checkpoint without one loaded, after it began)"
        )

    @torch.no_grad()
    def _stage(self) -> None:
        """After step ``n``: search along Δ and land on the best point."""
        step = self.stats.optimizer_steps
        if not self._direction_usable(step):
            return
        max_tau = self._schedule.max_tau(self.config)
        with self._validating() as progress:
            result = run_stage(
                self._buffers.params,
                self._buffers.delta,
                self._validation_loss,
                search=self.config.search,
                max_tau=max_tau,
                min_improvement=self.config.min_improvement,
                start=self._schedule.start_tau(max_tau),
                anchor=self._buffers.stage_anchor(),
                foreach=self.foreach,
                reversed_delta=True,
                span_start=self._first_reference_is_due(),
            )
        if not math.isfinite(result.loss_before):
            loss = result.loss_before
            self._skip_stage(step, f"the validation loss at W_n is {loss}", logging.WARNING)
            return
        before, after, passes = result.loss_before, result.loss_after, result.evaluations
        payoff = ratio = None
        if self.config.cost_aware:
            charged = passes  # the reference's pass is the rule's cost, not the stage's
            if result.loss_at_span_start is not None:
                self._cost.reference = (step - self.config.delta_steps, result.loss_at_span_start)
                charged -= 1
            payoff, ratio = self._cost.judge(
                step, before, after, charged, progress.seconds / passes,
                agree=self._mean_across_ranks,
            )  # fmt: skip
        rejected = (result.rejected_tau, result.rejected_loss)
        span = self.config.delta_steps
        self._record_stage(
            StageRecord(
                step, result.tau, before, after, passes, progress.seconds, *rejected, payoff, span,
                ratio,
            )
        )  # fmt: skip

    def _direction_usable(self, step: int) -> bool:
        """Turn the snapshot into Δ; whether it is worth a stage (not all zero, finite)."""
        size = self._buffers.reverse_(foreach=self.foreach)
        size = _max_across_ranks(size, self._collective_device(), self.process_group)
        if size == 0.0:
            # A step the base optimizer skipped: nothing to extrapolate, nothing wrong.
            self._skip_stage(step, "the last update is zero", logging.INFO)
            return False
        if not size < math.inf:
            self._skip_stage(step, "the last update is not finite", logging.WARNING)
            return False
        return True

    def _validation_loss(self) -> float:
        self.stats.evaluations += 1  # counted even if the call raises: its cost was paid
        _reshard_fsdp_modules(self.model)  # the point just written, not the last one gathered
        value = (
            self.val_closure(stage=self.stats.stages)
            if self._closure_takes_stage
            else self.val_closure()
        )
        checked = _checked_loss(value, "val_closure")
        loss = _mean_across_ranks(checked, self._collective_device(), self.process_group)
        self._progress.passed(self.process_group, self.stats.optimizer_steps, loss)
        return loss

    def _mean_across_ranks(self, value: float) -> float:
        return _mean_across_ranks(value, self._collective_device(), self.process_group)

    def _times_training(self) -> bool:
        """Whether ``cost_aware`` measures a pass's cost in training steps from wall time."""
        return self.config.cost_aware and self._cost.measures_time and self.active

    def _synchronize(self) -> None:
        """Wait for the work queued on the trainable parameters' device, before a timer reads."""
        params = self._buffers.params or self._trainable_params()
        if params:
            synchronize(params[0].device)

    def _collective_device(self) -> torch.device:
        params = self._buffers.params or self._trainable_params()
        return _collective_device(self.process_group, params[0].device)

    def _skip_stage(self, step: int, reason: str, level: int) -> None:
        self.stats.skipped_stages += 1
        log(self.process_group, level, "no stage after step %d: %s", step, reason)

    def _record_stage(self, record: StageRecord) -> None:
        stats = self.stats
        stats.stages += 1
        stats.simulated_steps += record.tau * record.delta_steps
        stats.history.append(record)
        out_of_patience = self._schedule.record(record.tau, self.config)
        log_stage(self.process_group, record, self.config.min_improvement)
        if out_of_patience:
            self._give_up(record.step, "patience")
            failed = self._schedule.failed_stages_in_a_row
            log_out_of_patience(self.process_group, record.step, failed, self.config)
        if self.config.cost_aware:
            self._cost.reference = (record.step, record.loss_after)
            unpaid = record.payoff is not None and record.payoff < 1
            if (
                unpaid
                and not self._schedule.gave_up
                and not _payoff.forgiven([r.payoff for r in stats.history])
            ):
                self._give_up(record.step, "payoff")
                log_stepped_aside(self.process_group, record)
        if self.on_stage is not None:
            self.on_stage(record)

    def _reference_at_span_start(self) -> bool:
        """Whether the first stage measures its own reference (``cost_aware``, interval Δ).

        A stage that gains evaluates ``W_n - Δ``, the interval's start, for its payoff's pace.
        """
        return self.config.cost_aware and self.config.delta_span == "interval"

    def _first_reference_is_due(self) -> bool:
        """Whether this stage, if it gains, measures the reference at ``W_n - Δ``.

        Only while there is none, and a pass's cost is known (given, or a timed training
        segment to measure it against): else the pass would buy nothing, and the stage is
        left unjudged.
        """
        clock = self._cost.clock
        measurable = not self._cost.measures_time or clock.running or clock.steps > 0
        return self._reference_at_span_start() and self._cost.reference is None and measurable

    def _measure_reference_if_missing(self, step: int) -> None:
        """``cost_aware``, Δ over the last step: the validation loss after ``step``, if none.

        Before the first stage, whose payoff measures training's rate from it. Taken after the
        last warmup step, so that the block ends a timed training segment on a whole iteration
        (or before the first step, with no warmup).
        """
        if (
            not (self.config.cost_aware and self.active)
            or self._reference_at_span_start()
            or self._cost.reference is not None
            or not self._trainable_params()  # nothing trains: measured once something does
        ):
            return
        self._cost.reference = (step, math.nan)  # if the pass raises: nothing to measure against
        with torch.no_grad(), self._validating():
            self._cost.reference = (step, self._validation_loss())

    @contextmanager
    def _validating(self) -> Iterator[StageProgress]:
        """A block of validation passes: a stage's, or the ``cost_aware`` reference's.

        The model is in eval mode, ``step()`` and the wrapped step are refused, progress lines
        are logged, and the wall time (``progress.seconds`` once the block has ended) counts as
        stage time. When ``cost_aware`` times training, the block ends the running training
        segment (the next starts at the end of ``step()``), with the device synchronised at
        both ends, so that each side is charged its own queued work.
        """
        timed = self._times_training()
        if timed:
            self._synchronize()
            self._cost.clock.stop(self.stats.optimizer_steps)
        progress = StageProgress(time.perf_counter(), next_report=_logs.PROGRESS_SECONDS)
        self._progress = progress
        self._in_stage = True
        try:
            with _eval_mode(self.model):
                yield progress
        finally:
            _reshard_fsdp_modules(self.model)  # training goes on from the landing point
            self._in_stage = False
            if timed:
                self._synchronize()
            progress.seconds = time.perf_counter() - progress.started
            self.stats.stage_seconds += progress.seconds

    def _give_up(self, step: int, reason: str) -> None:
        self._schedule.gave_up = True
        self.stats.gave_up_at_step, self.stats.gave_up_because = step, reason
        self._free_buffers()


def _read_through(name: str) -> property:
    return property(lambda self: getattr(self.config, name), doc=f"``config.{name}``, read only.")


for _field in dataclasses.fields(Config):
    setattr(FastForward, _field.name, _read_through(_field.name))


def _run_stages_eagerly() -> None:
    """Exclude the snapshot and the stage from ``torch.compile``, once per process.

    A stage is Python control flow around user code that dynamo would unroll or break on, so a
    compiled ``step`` compiles the wrapped optimizer's step and runs the stage eagerly. Done at
    the first construction rather than at import: ``torch.compiler.disable`` imports dynamo,
    which would double the import time of ``fastforward``.
    """
    if FastForward.__dict__.get("_stages_run_eagerly"):
        return
    for name in ("_snapshot_", "_why_unmovable", "_stage"):
        eager = torch.compiler.disable(FastForward.__dict__[name])  # type: ignore[no-untyped-call]
        setattr(FastForward, name, eager)
    FastForward._stages_run_eagerly = True  # type: ignore[attr-defined]
