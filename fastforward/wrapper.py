"""The :class:`FastForward` optimizer wrapper."""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fastforward import _keys
from fastforward._checks import (
    MAX_TAU_LIMIT,
    _check_bool,
    _check_cost_ratio,
    _check_int,
    _check_max_tau_ratio,
    _check_min_improvement,
    _checked_loss,
    _is_bool,
)
from fastforward._distributed import (
    _collective_device,
    _local_shard,
    _max_across_ranks,
    _mean_across_ranks,
    _world,
)
from fastforward._functional import _copy_, _max_abs, _reversed_delta_from_snapshot_
from fastforward._modes import _eval_mode
from fastforward._payoff import StepClock, stage_payoff
from fastforward._stage import (
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_SEARCH,
    SEARCHES,
    SearchStrategy,
    _check_search,
    _search_name,
)
from fastforward._stats import FastForwardStats, StageRecord
from fastforward.functional import StageResult, _run_stage

logger = logging.getLogger("fastforward")

ValClosure = Callable[..., "float | Tensor"]
StageCallback = Callable[[StageRecord], None]


class FastForward(Optimizer):
    r"""Wrap an optimizer; every ``interval`` steps, repeat its last step while that helps.

    Fast Forward (Rahamim et al., 2024) alternates ordinary optimizer steps with *stages*. Right
    after optimizer step ``n`` (counting from 1) with ``n > warmup`` and ``(n - warmup) %
    interval == 0``, a stage takes the last update of every trainable parameter and searches
    along it, judged by the loss on a tiny validation set:

    .. math::

        \Delta = W_n - W_{n-1}, \qquad
        L_\tau = \mathcal{L}_{val}(W_n + \tau\Delta), \quad \tau = 0, 1, 2, \dots

    The paper's search evaluates τ = 1, 2, ... until the loss stops improving; the default
    (``search="parabolic"``) finds the same τ on a loss that is convex along Δ in O(log τ*)
    evaluations. Non-finite losses never count as improvements and τ never exceeds ``max_tau``.
    The parameters are then left **bitwise** at the best point evaluated, ``W_n`` itself if no
    point beat ``L_0`` by ``min_improvement`` (the stage then accepted ``τ = 0``). So a stage
    never leaves the
    validation loss above where it started, also when ``val_closure`` raises (the exception
    propagates after the rollback, and training can go on). Stages never touch the wrapped
    optimizer's state, gradients or learning rates, and are not optimizer steps. A step whose
    ``Δ`` is all zero or not finite (for example one skipped by a ``GradScaler``) runs no stage.

    Give-up rule (paper §5.1): after ``patience`` stages in a row that accepted ``τ = 0``, Fast
    Forward switches itself off for good and the wrapper behaves exactly like the bare
    optimizer. With ``min_improvement=0`` and the paper's linear search that is the paper's rule
    (τ = 1 did not improve); with the default margin a stage whose best point gained less than
    0.1% counts as failed too.

    The wrapper *is* a :class:`torch.optim.Optimizer`: it shares ``param_groups``, ``state`` and
    ``defaults`` with the wrapped optimizer (the same objects), so LR schedulers, gradient
    clipping and ``torch.amp.GradScaler`` act on the wrapped optimizer through it. Which
    parameters a stage moves is read from ``param_groups`` at each stage (every tensor with
    ``requires_grad``), so ``add_param_group`` and freezing later are honoured.

    Args:
        optimizer: The optimizer to wrap, e.g. ``torch.optim.AdamW(lora_params, lr=4e-5)``.
        model: The module being trained. Stages put it in ``eval()`` mode while they evaluate and
            restore every submodule's mode afterwards.
        val_closure: Required. A callable taking no argument that returns the loss on the tiny
            validation set (the paper uses 32 examples) as a Python number or a 0-dim tensor;
            one that needs arguments is refused here. Called under ``torch.no_grad()`` with
            the model in eval mode; it must not change the parameters nor step the optimizer.
            If it (or, for an ``nn.Module``, its ``forward``) accepts a keyword argument
            ``stage``, it is called as ``val_closure(stage=k)`` in the k-th stage (from 0), so
            that it can rotate through held-out subsets instead of overfitting one (see
            ``validation_closure(..., rotate=...)``).
        interval: Optimizer steps between stages (default: 6, as in the paper).
        warmup: Optimizer steps before the schedule starts (default: 0). The first stage runs after
            step ``warmup + interval``.
        max_tau: Upper bound on the simulated steps of one stage; it guarantees termination on a
            loss that keeps falling (default: 1000).
        max_tau_ratio: If given, τ is also capped at ``max(1, floor(max_tau_ratio * interval))``
            (the current interval, with ``adaptive_interval``): no stage may jump further than
            that many intervals' worth of optimizer steps on the word of the tiny validation
            set (default: ``None``, no such cap).
        adaptive_interval: ``(shortest, longest)`` lets the interval change between these bounds
            (``shortest <= interval <= longest``): after a stage that accepted ``τ >= interval``
            the interval halves (stages are paying off, run them more often), after one that
            accepted ``τ <= 1`` it doubles; the next stage runs that many steps after the last
            scheduled one, or at the first step back after a pause with ``enabled=False`` that
            outlasted it (default: ``None``, every ``interval`` steps).
        patience: Stages in a row that accepted ``τ = 0`` before Fast Forward gives up for
            good; ``None`` never gives up (default: 3, as in the paper).
        search: How a stage looks for the best τ (default: ``"parabolic"``, the cheapest on the
            benchmarks in ``docs/results.md``):

            - ``"linear"``: the paper's τ = 1, 2, 3, ...; ``τ* + 2`` evaluations.
            - ``"doubling"``: τ = 1, 2, 4, ... until the loss stops improving, then bisection
              inside the last bracket; at most ``3 ceil(log2(τ* + 1)) + 5`` evaluations, and
              the same τ as linear search when the loss along Δ is convex (paper App. B).
            - ``"parabolic"``: τ = 1, 2, 3, then vertices of parabolas through the losses; on a
              loss quadratic on each side of its minimiser, the same τ as linear search in at
              most ``min(τ* + 2, 2 log2(τ* + 1) + 3)`` evaluations: never more than the
              paper's search.
            - ``"warm_start"``: as ``"doubling"``, but starting from the previous stage's τ*,
              which changes slowly over training (paper Fig. 11).
            - a :class:`~fastforward.functional.SearchStrategy` of your own, called as
              ``search(ray, max_tau, start)`` with ``start`` the previous stage's τ* (at least
              1); the stage lands on the best point it evaluated. A checkpoint records only its
              name (``module.qualname``; a ``functools.partial`` with its arguments), so the
              wrapper that loads it must be given the same callable. Lambdas and callable
              objects are known only by module and class, so prefer a module-level function.
        min_improvement: A stage leaves ``W_n`` only if its best point beats ``L_0`` by this
            fraction of ``|L_0|``, e.g. ``1e-3``; otherwise it counts as ``τ = 0`` (also for the
            give-up rule). It judges the stage as a whole, not each simulated step, which at a
            small learning rate gains far less than any useful margin (default: ``1e-3``: on the
            benchmark it ended stages at the tuned learning rate that gained next to nothing,
            so Fast Forward gave up after 7 evaluations instead of 18, and changed nothing at
            the paper's rate; see ``docs/results.md``).
        cost_aware: Step aside (switch Fast Forward off for good) after the first stage that
            bought less validation loss than training would have with the same compute: the
            stage's gain ``L_0 - L_after`` against training's gain per step since the last
            measured point (the previous stage's landing, or a validation pass made before the
            first step, counted in ``stats.evaluations``) times the stage's passes times
            ``cost_ratio``. Each stage's ratio of the two is ``StageRecord.payoff``. See
            ``docs/algorithm.md`` and, for what it does to the loss, ``docs/results.md``
            (default: ``False``).
        cost_ratio: With ``cost_aware``, the cost of one validation pass in training steps, e.g.
            the ratio of their FLOPs; ``None`` measures it: a stage's seconds per pass over the
            mean wall time between ``step()`` calls, stages left out (unreliable when the device
            runs asynchronously to the host; default: ``None``).
        enabled: ``False`` turns stages off: the wrapper is then bitwise the bare optimizer. May be
            changed between steps through the attribute of the same name (default: ``True``).
        on_stage: Called with the :class:`StageRecord` of every stage that ran (default: ``None``).
        foreach: Use the multi-tensor ``torch._foreach_*`` kernels; ``None`` means yes. ``False``
            loops over tensors, for tensor types without ``_foreach`` support (default: ``None``).
        keep_buffers: Keep the two stage buffers allocated between stages (default: ``True``).
            ``False`` frees them after each stage and allocates them again at the next one:
            for full-rank training, where they are twice the trainable parameters.
        process_group: When ``torch.distributed`` is initialized, the validation loss is averaged
            and the size of Δ maximised over this group (``None``: the default group), so that
            every rank accepts the same τ and runs the same number of forward passes. All ranks
            must therefore step together, as they do under DDP and FSDP (default: ``None``).

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
        Memory: two extra copies of the trainable parameters (``W_n`` and ``Δ``), allocated at the
        first stage on each parameter's device and dtype and reused; freed when Fast Forward gives
        up or ``enabled`` is set to ``False``. With LoRA that is a few MB; for full-rank training
        it is ``2 * param_bytes``, held through the optimizer steps between stages, whose own
        temporaries come on top: pass ``keep_buffers=False`` to hold them only from the step
        before a stage to its end, at the cost of two allocations per stage.

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
        cost_aware: bool = False,
        cost_ratio: float | None = None,
        enabled: bool = True,
        on_stage: StageCallback | None = None,
        foreach: bool | None = None,
        keep_buffers: bool = True,
        process_group: Any = None,
    ) -> None:
        _check_kinds(optimizer, model, val_closure, on_stage)
        assert val_closure is not None  # for mypy: _check_kinds refuses None
        _refuse_deferred_parameter_updates(optimizer)
        _refuse_second_wrapper(optimizer)
        hyperparameters = _check_hyperparameters(
            interval=interval,
            warmup=warmup,
            max_tau=max_tau,
            max_tau_ratio=max_tau_ratio,
            adaptive_interval=adaptive_interval,
            patience=patience,
            search=search,
            min_improvement=min_improvement,
            cost_aware=cost_aware,
            cost_ratio=cost_ratio,
        )
        self._closure_takes_stage = _check_closure_signature(val_closure)
        # Optimizer.__init__ sets up hooks and profiling; it gets copies of the group dicts and
        # builds containers of its own, which are dropped once `optimizer` is set (see below)
        # (listed once each: torch warned about duplicates when the optimizer was built).
        groups = [
            {**group, "params": list(dict.fromkeys(group["params"]))}
            for group in optimizer.param_groups
        ]
        super().__init__(groups, optimizer.defaults)
        self.optimizer = optimizer
        for name in _CONTAINERS:
            del self.__dict__[_own(name)]
        trainable = self._trainable_params()
        if not trainable:
            raise ValueError(
                "fastforward: optimizer has no parameter with requires_grad=True; "
                "pass the optimizer of the trainable (e.g. LoRA) parameters"
            )
        _check_owned_by(trainable, model)
        self.model = model
        self.val_closure = val_closure
        self.interval: int = hyperparameters["interval"]
        self.warmup: int = hyperparameters["warmup"]
        self.max_tau: int = hyperparameters["max_tau"]
        self.max_tau_ratio: float | None = hyperparameters["max_tau_ratio"]
        self.adaptive_interval: tuple[int, int] | None = hyperparameters["adaptive_interval"]
        self.patience: int | None = hyperparameters["patience"]
        self.search: str | SearchStrategy = hyperparameters["search"]
        self.min_improvement: float = hyperparameters["min_improvement"]
        self.cost_aware: bool = hyperparameters["cost_aware"]
        self.cost_ratio: float | None = hyperparameters["cost_ratio"]
        self.enabled = enabled
        self.on_stage = on_stage
        self.foreach = True if foreach is None else foreach
        self.keep_buffers = _check_bool("keep_buffers", keep_buffers)
        self.process_group = process_group
        self.stats = FastForwardStats()
        self._in_stage = False  # a stage is running: step() and the wrapped step must not
        self._stepping = False  # inside step(): the wrapped optimizer's step is ours
        self._warned_direct_step = False
        self._progress = _Progress(0.0, next_report=PROGRESS_SECONDS)
        self._gave_up = False
        self._failed_stages_in_a_row = 0
        self._last_tau = 0
        self._interval_now = interval  # changes only with adaptive_interval
        self._last_scheduled_step = warmup  # the step after which the last stage was due
        self._stage_owners: list[Tensor] = []  # the parameters a stage moves
        self._stage_params: list[Tensor] = []  # what it writes: their local shards
        self._anchor: list[Tensor] = []  # W_n in a stage
        self._delta: list[Tensor] = []  # W_{n-1} between snapshot and step, then -Δ
        self._buffer_layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        # cost_aware: the last measured (step, validation loss), and the training step's time.
        self._reference: tuple[int, float] | None = None
        self._clock = StepClock()
        self._guard_base_steps()
        _run_stages_eagerly()

    # The wrapped optimizer's containers, read on every access: the wrapper never holds a copy
    # that could go stale (the wrapped optimizer's own load_state_dict replaces them). Until
    # `optimizer` is set, Optimizer.__init__ fills private ones of its own.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's ``param_groups`` (the same list)."""
        return self._container("param_groups")  # type: ignore[no-any-return]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._set_container("param_groups", value)

    @property
    def state(self) -> Any:
        """The wrapped optimizer's ``state`` (the same dict)."""
        return self._container("state")

    @state.setter
    def state(self, value: Any) -> None:
        self._set_container("state", value)

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's ``defaults`` (the same dict)."""
        return self._container("defaults")  # type: ignore[no-any-return]

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._set_container("defaults", value)

    def _container(self, name: str) -> Any:
        base = self.__dict__.get("optimizer")
        return self.__dict__[_own(name)] if base is None else getattr(base, name)

    def _set_container(self, name: str, value: Any) -> None:
        base = self.__dict__.get("optimizer")
        if base is None:
            self.__dict__[_own(name)] = value
        else:
            setattr(base, name, value)

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
        return self._enabled and not self._gave_up

    @property
    def current_interval(self) -> int:
        """Optimizer steps from the last scheduled stage to the next one."""
        return self._interval_now

    def __repr__(self) -> str:
        return (
            f"FastForward(interval={self.interval}, warmup={self.warmup}, max_tau={self.max_tau}, "
            f"max_tau_ratio={self.max_tau_ratio}, adaptive_interval={self.adaptive_interval}, "
            f"patience={self.patience}, search={_search_name(self.search)!r}, "
            f"min_improvement={self.min_improvement}, cost_aware={self.cost_aware}, "
            f"cost_ratio={self.cost_ratio}, active={self.active},\n"
            f"{self.optimizer!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups: copies would lose us.
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # The wrapped optimizer's own __getstate__ dropped its hooks, our guard among them.
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
        step = self.stats.optimizer_steps + 1
        if self.cost_aware:
            self._clock.tick()
            if self._reference is None and self.active and step > self.warmup:
                self._measure_reference(step - 1)
        stage_due = self._stage_due(step)
        movable = stage_due and self._snapshot_()
        self._stepping = True
        try:
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        finally:
            self._stepping = False
        self.stats.optimizer_steps = step
        if stage_due:
            self._last_scheduled_step = step
            try:
                if movable:
                    self._stage()
                else:
                    self._skip_stage(step, "no parameter requires grad", logging.INFO)
            finally:
                if not self.keep_buffers:
                    self._free_buffers()
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
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict()`` plus one entry with the wrapper's own state.

        The extra entry, ``"fastforward"``, holds the step and stage counters, the give-up state,
        the hyperparameters and the stage history, as plain dicts, lists and numbers, so the
        result loads with ``torch.load(..., weights_only=True)``. The step buffers are not saved:
        they are refilled before each stage, so a checkpoint taken between steps resumes bitwise.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        state_dict[_keys.WRAPPER] = self._wrapper_state()
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
        :meth:`wrapper_state_dict` to checkpoint them separately).

        Raises:
            ValueError: the ``"fastforward"`` entry is malformed; nothing is loaded then.
        """
        self._refuse_during_stage("load_state_dict()")
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hooked = pre_hook(self, state_dict)
            if hooked is not None:
                state_dict = hooked
        base_state = dict(state_dict)
        wrapper_state = base_state.pop(_keys.WRAPPER, None)
        # Checked before anything is loaded, so that a rejected dict changes nothing.
        parsed = {} if wrapper_state is None else self._parse_wrapper_state(wrapper_state)
        self.optimizer.load_state_dict(base_state)
        if wrapper_state is None:
            self._log(
                logging.WARNING,
                "the loaded state_dict has no %r entry (saved from a bare optimizer, or through "
                "torch.distributed.checkpoint?); the wrapper keeps its own schedule (%d optimizer "
                "steps, %d stages, %s); to keep it across a checkpoint, save "
                "ff.wrapper_state_dict() (with DCP: fastforward.dcp.WrapperState(ff)) beside it",
                _keys.WRAPPER,
                self.stats.optimizer_steps,
                self.stats.stages,
                "active" if self.active else "off",
            )
        else:
            self._set_wrapper_state(parsed)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def wrapper_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state alone: the ``"fastforward"`` entry of :meth:`state_dict`.

        For checkpoint tools that keep only ``state`` and ``param_groups`` of an optimizer: save
        this dict beside theirs and give it to :meth:`load_wrapper_state_dict` after theirs is
        loaded (for ``torch.distributed.checkpoint``, ``fastforward.dcp.WrapperState`` does
        both). Plain dicts, lists and numbers; the same on every rank but for the timings.
        """
        return self._wrapper_state()

    def load_wrapper_state_dict(self, state: dict[str, Any]) -> None:
        """Load a dict from :meth:`wrapper_state_dict`; the wrapped optimizer is not touched.

        Raises:
            ValueError: ``state`` is malformed; nothing is changed then.
        """
        self._refuse_during_stage("load_wrapper_state_dict()")
        self._set_wrapper_state(self._parse_wrapper_state(state))

    def _set_wrapper_state(self, parsed: dict[str, Any]) -> None:
        enabled = parsed.pop("enabled")
        for name, value in parsed.items():
            setattr(self, name, value)
        self.enabled = enabled
        if self._gave_up:
            self._free_buffers()

    def _trainable_params(self) -> list[Tensor]:
        """The tensors a stage moves: trainable, each once (by identity), in group order."""
        distinct: dict[int, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    distinct.setdefault(id(p), p)
        return list(distinct.values())

    def _refuse_during_stage(self, what: str) -> None:
        if self.__dict__.get("_in_stage"):
            raise RuntimeError(
                f"fastforward: {what} was called during a Fast Forward stage (from val_closure?); "
                "a stage must finish before the optimizer changes"
            )

    def _guard_base_steps(self) -> None:
        """Hook the wrapped optimizer's step: refused during a stage, a warning if not ours."""
        hooks = self.optimizer._optimizer_step_pre_hooks
        if not any(isinstance(h, _BaseStepGuard) and h.wrapper() is self for h in hooks.values()):
            self.optimizer.register_step_pre_hook(_BaseStepGuard(self))

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
        self._stage_owners, self._stage_params, self._anchor, self._delta = [], [], [], []
        self._buffer_layout = []

    def _stage_due(self, step: int) -> bool:
        if not self.active or step <= self.warmup:
            return False
        if self.adaptive_interval is None:
            return (step - self.warmup) % self.interval == 0
        return step - self._last_scheduled_step >= self._interval_now

    def _max_tau_now(self) -> int:
        if self.max_tau_ratio is None:
            return self.max_tau
        cap = self.max_tau_ratio * self._interval_now
        return self.max_tau if cap >= self.max_tau else max(1, math.floor(cap))

    def _snapshot_(self) -> bool:
        """Before the step that a stage follows: record ``W_{n-1}`` in the Δ buffers.

        Returns whether there is anything to move (some tensor still requires grad).
        """
        owners = self._trainable_params()
        if not owners:
            return False
        params = [_local_shard(p) for p in owners]
        # model.to(...) changes a parameter's device or dtype in place: identity is not enough.
        layout = [(p.shape, p.dtype, p.device) for p in params]
        if layout != self._buffer_layout or not _same_tensors(owners, self._stage_owners):
            _check_owned_by(owners, self.model)
            self._stage_owners, self._buffer_layout = owners, layout
            self._anchor = [torch.empty_like(p) for p in params]
            self._delta = [torch.empty_like(p) for p in params]
        self._stage_params = params
        with torch.no_grad():
            _copy_(self._delta, params, foreach=self.foreach)
        return True

    @torch.no_grad()
    def _stage(self) -> None:
        """After step ``n``: search along Δ and land on the best point."""
        step = self.stats.optimizer_steps
        if not self._direction_usable(step):
            return
        max_tau = self._max_tau_now()
        with self._validating() as progress:
            result = _run_stage(
                self._stage_params,
                self._delta,
                self._validation_loss,
                search=self.search,
                max_tau=max_tau,
                min_improvement=self.min_improvement,
                start=min(max(1, self._last_tau), max_tau),
                anchor=self._anchor,
                foreach=self.foreach,
                reversed_delta=True,
            )
        seconds = progress.seconds
        if not math.isfinite(result.loss_before):
            loss = result.loss_before
            self._skip_stage(step, f"the validation loss at W_n is {loss}", logging.WARNING)
            return
        self._record_stage(
            StageRecord(
                step,
                result.tau,
                result.loss_before,
                result.loss_after,
                result.evaluations,
                seconds,
                result.rejected_tau,
                result.rejected_loss,
                self._payoff(step, result, seconds),
            )
        )

    def _direction_usable(self, step: int) -> bool:
        """Turn the snapshot into Δ; whether it is worth a stage (not all zero, finite)."""
        _reversed_delta_from_snapshot_(self._delta, self._stage_params, foreach=self.foreach)
        size = _max_abs(self._delta)
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
        value = (
            self.val_closure(stage=self.stats.stages)
            if self._closure_takes_stage
            else self.val_closure()
        )
        checked = _checked_loss(value, "val_closure")
        loss = _mean_across_ranks(checked, self._collective_device(), self.process_group)
        self._report_progress(loss)
        return loss

    def _report_progress(self, loss: float) -> None:
        """A DEBUG line per evaluation; an INFO line every ``PROGRESS_SECONDS`` of one stage."""
        progress = self._progress
        progress.evaluations += 1
        if logger.isEnabledFor(logging.DEBUG):
            self._log(
                logging.DEBUG,
                "stage after step %d: validation pass %d: loss %.6g",
                self.stats.optimizer_steps,
                progress.evaluations,
                loss,
            )
        elapsed = time.perf_counter() - progress.started
        if elapsed >= progress.next_report:
            progress.next_report += PROGRESS_SECONDS
            self._log(
                logging.INFO,
                "stage after step %d still running: %d validation passes in %.0f s",
                self.stats.optimizer_steps,
                progress.evaluations,
                elapsed,
            )

    def _log(self, level: int, message: str, *args: object) -> None:
        """Log through the ``fastforward`` logger, naming the rank under torch.distributed."""
        rank = _rank(self.process_group)
        logger.log(level, message if rank is None else f"rank {rank}: {message}", *args)

    def _collective_device(self) -> torch.device:
        params = self._stage_params or self._trainable_params()
        return _collective_device(self.process_group, params[0].device)

    def _skip_stage(self, step: int, reason: str, level: int) -> None:
        self.stats.skipped_stages += 1
        self._log(level, "no stage after step %d: %s", step, reason)

    def _record_stage(self, record: StageRecord) -> None:
        stats = self.stats
        stats.stages += 1
        stats.simulated_steps += record.tau
        stats.history.append(record)
        self._last_tau = record.tau
        self._adapt_interval(record.tau)
        rejected = ""
        if record.rejected_tau is not None and record.rejected_loss is not None:
            gain = 1 - record.rejected_loss / record.loss_before if record.loss_before else 0.0
            rejected = (
                f"; best point tau={record.rejected_tau} gained only {gain:.3%} "
                f"< min_improvement {self.min_improvement:.3%}"
            )
        self._log(
            logging.INFO,
            "stage after step %d: tau=%d, val loss %.6g -> %.6g (%d validation passes, %.1f s)%s",
            record.step,
            record.tau,
            record.loss_before,
            record.loss_after,
            record.evaluations,
            record.seconds,
            rejected,
        )
        self._failed_stages_in_a_row = self._failed_stages_in_a_row + 1 if record.tau == 0 else 0
        if self.patience is not None and self._failed_stages_in_a_row >= self.patience:
            self._give_up(record.step, "patience")
            # WARNING: the default log level shows it; a user must know that stages stopped.
            self._log(
                logging.WARNING,
                "Fast Forward is off from step %d on: %d stages in a row accepted tau=0 "
                "(patience=%d; none beat the validation loss at W_n by min_improvement=%g); the "
                "wrapper is now the bare optimizer",
                record.step,
                self._failed_stages_in_a_row,
                self.patience,
                self.min_improvement,
            )
        if self.cost_aware:
            self._reference = (record.step, record.loss_after)
            if record.payoff is not None and record.payoff < 1 and not self._gave_up:
                self._step_aside(record)
        if self.on_stage is not None:
            self.on_stage(record)

    def _payoff(self, step: int, result: StageResult, seconds: float) -> float | None:
        """``cost_aware``: training steps' worth of loss the stage bought per step it cost.

        None when the rule is off or has nothing to measure against yet.
        """
        if not self.cost_aware or self._reference is None:
            return None
        reference_step, reference_loss = self._reference
        ratio = self.cost_ratio
        if ratio is None:
            step_seconds = self._clock.seconds_per_step
            if step_seconds is None or not step_seconds > 0:
                return None
            ratio = seconds / result.evaluations / step_seconds
        if not math.isfinite(reference_loss) or step <= reference_step:
            return None
        return stage_payoff(
            result.loss_before - result.loss_after,
            result.evaluations,
            ratio,
            (reference_loss - result.loss_before) / (step - reference_step),
        )

    def _measure_reference(self, step: int) -> None:
        """``cost_aware``: the validation loss before the first stage, for training's rate."""
        self._reference = (step, math.nan)  # if the pass raises: nothing to measure against
        with torch.no_grad(), self._validating():
            self._reference = (step, self._validation_loss())

    @contextmanager
    def _validating(self) -> Iterator[_Progress]:
        """A block of validation passes: a stage's, or the ``cost_aware`` reference's.

        The model is in eval mode, ``step()`` and the wrapped step are refused, progress lines
        are logged, and the wall time (``progress.seconds`` once the block has ended) counts as
        stage time and is left out of the training step's.
        """
        progress = self._progress = _Progress(time.perf_counter(), next_report=PROGRESS_SECONDS)
        self._in_stage = True
        try:
            with _eval_mode(self.model):
                yield progress
        finally:
            self._in_stage = False
            progress.seconds = time.perf_counter() - progress.started
            self.stats.stage_seconds += progress.seconds
            self._clock.exclude(progress.seconds)

    def _step_aside(self, record: StageRecord) -> None:
        self._give_up(record.step, "payoff")
        # WARNING: the default log level shows it; a user must know that stages stopped.
        self._log(
            logging.WARNING,
            "Fast Forward steps aside from step %d on: its stage bought %.2fx the validation "
            "loss that training buys with the same compute (cost_aware; val loss %.6g -> %.6g "
            "in %d validation passes); the wrapper is now the bare optimizer",
            record.step,
            record.payoff,
            record.loss_before,
            record.loss_after,
            record.evaluations,
        )

    def _adapt_interval(self, tau: int) -> None:
        if self.adaptive_interval is None:
            return
        shortest, longest = self.adaptive_interval
        if tau >= self._interval_now:
            self._interval_now = max(shortest, self._interval_now // 2)
        elif tau <= 1:
            self._interval_now = min(longest, self._interval_now * 2)

    def _give_up(self, step: int, reason: str) -> None:
        self._gave_up = True
        self.stats.gave_up_at_step, self.stats.gave_up_because = step, reason
        self._free_buffers()

    def _wrapper_state(self) -> dict[str, Any]:
        return {
            _keys.VERSION: _keys.FORMAT_VERSION,
            _keys.HYPERPARAMETERS: {
                "interval": self.interval,
                "warmup": self.warmup,
                "max_tau": self.max_tau,
                "max_tau_ratio": self.max_tau_ratio,
                "adaptive_interval": (
                    None if self.adaptive_interval is None else list(self.adaptive_interval)
                ),
                "patience": self.patience,
                "search": _search_name(self.search),
                "min_improvement": self.min_improvement,
                "cost_aware": self.cost_aware,
                "cost_ratio": self.cost_ratio,
            },
            _keys.ENABLED: self.enabled,
            _keys.GAVE_UP: self._gave_up,
            _keys.FAILED_STAGES_IN_A_ROW: self._failed_stages_in_a_row,
            _keys.LAST_TAU: self._last_tau,
            _keys.INTERVAL_NOW: self._interval_now,
            _keys.LAST_SCHEDULED_STEP: self._last_scheduled_step,
            _keys.REFERENCE: None if self._reference is None else list(self._reference),
            _keys.STATS: self.stats.to_dict(),
        }

    def _parse_wrapper_state(self, state: object) -> dict[str, Any]:
        """The attributes a saved wrapper state sets, all checked; nothing is changed yet.

        Raises:
            ValueError: naming the first field that is missing or has a wrong type or value.
        """
        if not isinstance(state, dict):
            raise ValueError(
                f"fastforward: the {_keys.WRAPPER!r} entry of the state_dict must be a dict, "
                f"got {type(state).__name__}"
            )
        version = state.get(_keys.VERSION)
        if version != _keys.FORMAT_VERSION:
            raise ValueError(
                f"fastforward: state_dict format version {version!r} is not supported "
                f"(this version reads {_keys.FORMAT_VERSION})"
            )
        try:
            saved: dict[str, Any] = dict(state[_keys.HYPERPARAMETERS])
            # Absent from dicts saved before these options existed: both were off.
            saved.setdefault("max_tau_ratio", None)
            saved.setdefault("adaptive_interval", None)
            saved.setdefault("cost_aware", False)
            saved.setdefault("cost_ratio", None)
            saved["search"] = self._saved_search(saved["search"])
            hyperparameters = _check_hyperparameters(**saved)
            interval, warmup = hyperparameters["interval"], hyperparameters["warmup"]
            stats = FastForwardStats.from_dict(state[_keys.STATS])
            steps_since_warmup = max(0, stats.optimizer_steps - warmup)
            default_last = warmup + steps_since_warmup // interval * interval
            parsed = {
                **hyperparameters,
                "enabled": _saved_bool(state, _keys.ENABLED),
                "_gave_up": _saved_bool(state, _keys.GAVE_UP),
                "_failed_stages_in_a_row": _saved_int(state, _keys.FAILED_STAGES_IN_A_ROW, 0),
                "_last_tau": _saved_int(state, _keys.LAST_TAU, 0),
                "_interval_now": _saved_int(state, _keys.INTERVAL_NOW, 0, default=interval),
                "_last_scheduled_step": _saved_int(
                    state, _keys.LAST_SCHEDULED_STEP, 0, default=default_last
                ),
                "_reference": _saved_reference(state.get(_keys.REFERENCE)),
                "stats": stats,
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"fastforward: the {_keys.WRAPPER!r} entry of the state_dict is malformed: "
                f"{error!r}"
            ) from error
        bounds = hyperparameters["adaptive_interval"]
        if bounds is None:
            parsed["_interval_now"] = interval
        elif not bounds[0] <= parsed["_interval_now"] <= bounds[1]:
            raise ValueError(
                f"fastforward: the saved interval_now {parsed['_interval_now']} is outside "
                f"adaptive_interval {bounds}"
            )
        return parsed

    def _saved_search(self, name: object) -> object:
        """The strategy a checkpoint names: a built-in, or this wrapper's own callable."""
        if not isinstance(name, str) or name in SEARCHES:
            return name
        if callable(self.search) and _search_name(self.search) == name:
            return self.search
        raise ValueError(
            f"fastforward: the checkpoint was saved with the search strategy {name!r}; pass "
            "that callable as search= to the wrapper that loads it"
        )


_CONTAINERS = ("param_groups", "state", "defaults")

PROGRESS_SECONDS = 10.0
"""A stage that runs this long logs an INFO line, and again after each further interval."""


@dataclass
class _Progress:
    """Where the running stage is, for its progress lines."""

    started: float
    next_report: float  # seconds into the stage
    evaluations: int = 0
    seconds: float = 0.0  # the whole stage's, once it has ended


def _rank(group: Any) -> int | None:
    """This process's rank when torch.distributed is in use with more than one rank."""
    if _world(group) == 1:
        return None
    return int(torch.distributed.get_rank(group))


def _run_stages_eagerly() -> None:
    """Exclude the snapshot and the stage from ``torch.compile``, once per process.

    A stage is Python control flow around user code that dynamo would unroll or break on, so a
    compiled ``step`` compiles the wrapped optimizer's step and runs the stage eagerly. Done at
    the first construction rather than at import: ``torch.compiler.disable`` imports dynamo,
    which would double the import time of ``fastforward``.
    """
    if FastForward.__dict__.get("_stages_run_eagerly"):
        return
    for name in ("_snapshot_", "_stage"):
        eager = torch.compiler.disable(FastForward.__dict__[name])  # type: ignore[no-untyped-call]
        setattr(FastForward, name, eager)
    FastForward._stages_run_eagerly = True  # type: ignore[attr-defined]


def _own(container: str) -> str:
    """Where Optimizer.__init__'s own container lives until the wrapped optimizer is known."""
    return f"_init_{container}"


class _BaseStepGuard:
    """A step pre-hook on the wrapped optimizer, holding its wrapper weakly.

    Weakly, so that a wrapper the user dropped is freed and the optimizer can be wrapped again.
    """

    def __init__(self, wrapper: FastForward) -> None:
        self.wrapper = weakref.ref(wrapper)

    def __call__(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        wrapper = self.wrapper()
        if wrapper is not None:
            wrapper._before_base_step()


def _refuse_second_wrapper(optimizer: Optimizer) -> None:
    for hook in optimizer._optimizer_step_pre_hooks.values():
        if isinstance(hook, _BaseStepGuard) and hook.wrapper() is not None:
            raise ValueError(
                "fastforward: optimizer is already wrapped by another FastForward that is still "
                "alive; two wrappers would each run stages. Use the existing wrapper, or drop "
                "every reference to it first"
            )


def _check_kinds(optimizer: object, model: object, val_closure: object, on_stage: object) -> None:
    if isinstance(optimizer, FastForward):
        raise TypeError("fastforward: optimizer is already a FastForward; wrap the bare optimizer")
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


def _check_owned_by(params: list[Tensor], model: nn.Module) -> None:
    """A stage evaluates ``model``, so it must move the model's own tensors.

    Fails when the optimizer was built on another copy of the model, or holds copies of its
    own, e.g. the flat fp32 partitions that DeepSpeed ZeRO copies into the model after a step.
    """
    owned = {id(p) for p in model.parameters()}
    strangers = sum(id(p) not in owned for p in params)
    if strangers:
        raise RuntimeError(
            f"fastforward: {strangers} of the optimizer's {len(params)} trainable tensors are not "
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


def _check_hyperparameters(
    *,
    interval: object,
    warmup: object,
    max_tau: object,
    patience: object,
    search: object,
    min_improvement: object,
    max_tau_ratio: object,
    adaptive_interval: object,
    cost_aware: object,
    cost_ratio: object,
) -> dict[str, Any]:
    """The hyperparameters, checked, as plain Python values (``int``, ``float``, ``str``)."""
    interval = _check_int("interval", interval, 1)
    _check_search(search)
    return {
        "interval": interval,
        "warmup": _check_int("warmup", warmup, 0),
        "max_tau": _check_int("max_tau", max_tau, 1, MAX_TAU_LIMIT),
        "max_tau_ratio": _check_max_tau_ratio(max_tau_ratio),
        "adaptive_interval": (
            None
            if adaptive_interval is None
            else _check_interval_bounds(adaptive_interval, interval)
        ),
        "patience": None if patience is None else _check_int("patience", patience, 1),
        # A str subclass (an enum) is stored as the plain string it equals.
        "search": str.__str__(search) if isinstance(search, str) else search,
        "min_improvement": _check_min_improvement(min_improvement),
        "cost_aware": _check_bool("cost_aware", cost_aware),
        "cost_ratio": _check_cost_ratio(cost_ratio),
    }


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


def _saved_bool(state: dict[str, Any], key: str) -> bool:
    value = state[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be a bool, got {value!r}")
    return value


def _saved_reference(value: object) -> tuple[int, float] | None:
    """A saved ``[step, loss]`` pair (the loss may be NaN), or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"{_keys.REFERENCE} must be [step, loss] or None, got {value!r}")
    step, loss = value
    if _is_bool(loss) or not isinstance(loss, (int, float)):
        raise TypeError(f"{_keys.REFERENCE} loss must be a number, got {loss!r}")
    return _check_int(_keys.REFERENCE, step, 0), float(loss)


def _saved_int(state: dict[str, Any], key: str, low: int, default: int | None = None) -> int:
    value = state.get(key, default) if default is not None else state[key]
    return _check_int(key, value, low)


def _same_tensors(tensors: list[Tensor], others: list[Tensor]) -> bool:
    """Whether the two lists hold the same tensor objects, in the same order."""
    return len(tensors) == len(others) and all(t is o for t, o in zip(tensors, others, strict=True))
