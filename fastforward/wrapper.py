"""The :class:`FastForward` optimizer wrapper."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import time
from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fastforward import _keys
from fastforward._checks import _check_int, _check_min_improvement
from fastforward._distributed import (
    _collective_device,
    _local_shard,
    _max_across_ranks,
    _mean_across_ranks,
)
from fastforward._functional import _copy_, _delta_from_snapshot_, _max_abs
from fastforward._modes import _eval_mode
from fastforward._stage import (
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_SEARCH,
    SEARCHES,
    SearchStrategy,
    _check_search,
    _search_name,
)
from fastforward._stats import FastForwardStats, StageRecord
from fastforward.functional import fast_forward_stage

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
        val_closure: Zero-argument callable returning the loss on the tiny validation set (the
            paper uses 32 examples) as a Python number or a 0-dim tensor. Called under
            ``torch.no_grad()`` with the model in eval mode; it must not change the parameters.
            If it accepts a keyword argument ``stage``, it is called as ``val_closure(stage=k)``
            in the k-th stage (from 0), so that it can rotate through held-out subsets instead
            of overfitting one (see ``validation_closure(..., rotate=...)``).
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
            benchmark in ``docs/results.md``: 23 validation passes where linear search needed 532,
            and the same τ in every stage measured):

            - ``"linear"``: the paper's τ = 1, 2, 3, ...; ``τ* + 2`` evaluations.
            - ``"doubling"``: τ = 1, 2, 4, ... until the loss stops improving, then bisection
              inside the last bracket; at most ``3 ceil(log2(τ* + 1)) + 5`` evaluations, and
              the same τ as linear search when the loss along Δ is convex (paper App. B).
            - ``"parabolic"``: as ``"doubling"``, but each probe inside the bracket is the vertex
              of the parabola through its three points (bisection when that stalls); fewer
              evaluations than ``"doubling"`` on smooth losses, with the same bound.
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
        enabled: ``False`` turns stages off: the wrapper is then bitwise the bare optimizer. May be
            changed between steps through the attribute of the same name (default: ``True``).
        on_stage: Called with the :class:`StageRecord` of every stage that ran (default: ``None``).
        foreach: Use the multi-tensor ``torch._foreach_*`` kernels; ``None`` means yes. ``False``
            loops over tensors, for tensor types without ``_foreach`` support (default: ``None``).
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
        up. With LoRA that is a few MB; for full-rank training it is ``2 * param_bytes``.

    .. warning::
        Fast Forward helps low-rank finetuning (LoRA, DoRA). On full-rank training the paper finds
        that even ``τ = 1`` usually increases the loss; the give-up rule then turns it off.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        val_closure: ValClosure,
        interval: int = 6,
        *,
        warmup: int = 0,
        max_tau: int = 1000,
        max_tau_ratio: float | None = None,
        adaptive_interval: tuple[int, int] | None = None,
        patience: int | None = 3,
        search: str | SearchStrategy = DEFAULT_SEARCH,
        min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
        enabled: bool = True,
        on_stage: StageCallback | None = None,
        foreach: bool | None = None,
        process_group: Any = None,
    ) -> None:
        _check_kinds(optimizer, model, val_closure, on_stage)
        _refuse_deferred_parameter_updates(optimizer)
        _check_hyperparameters(
            interval=interval,
            warmup=warmup,
            max_tau=max_tau,
            max_tau_ratio=max_tau_ratio,
            adaptive_interval=adaptive_interval,
            patience=patience,
            search=search,
            min_improvement=min_improvement,
        )
        # Optimizer.__init__ sets up hooks and profiling; it gets copies of the group dicts so
        # that it cannot touch the wrapped optimizer's, and its containers are replaced below.
        super().__init__([dict(group) for group in optimizer.param_groups], optimizer.defaults)
        self.optimizer = optimizer
        self._share_base_containers()
        if not self._trainable_params():
            raise ValueError(
                "fastforward: optimizer has no parameter with requires_grad=True; "
                "pass the optimizer of the trainable (e.g. LoRA) parameters"
            )
        self.model = model
        self.val_closure = val_closure
        self._closure_takes_stage = _accepts_keyword(val_closure, "stage")
        self.interval, self.warmup = interval, warmup
        self.max_tau, self.patience = max_tau, patience
        self.max_tau_ratio = max_tau_ratio
        self.adaptive_interval = None if adaptive_interval is None else tuple(adaptive_interval)
        self.search, self.min_improvement = search, min_improvement
        self.enabled = enabled
        self.on_stage = on_stage
        self.foreach = True if foreach is None else foreach
        self.process_group = process_group
        self.stats = FastForwardStats()
        self._gave_up = False
        self._failed_stages_in_a_row = 0
        self._last_tau = 0
        self._interval_now = interval  # changes only with adaptive_interval
        self._last_scheduled_step = warmup  # the step after which the last stage was due
        self._stage_owners: list[Tensor] = []  # the parameters a stage moves
        self._stage_params: list[Tensor] = []  # what it writes: their local shards
        self._anchor: list[Tensor] = []  # W_n in a stage
        self._delta: list[Tensor] = []  # W_{n-1} between snapshot and step, then Δ

    @property
    def active(self) -> bool:
        """Whether stages will still run: enabled and not given up."""
        return self.enabled and not self._gave_up

    @property
    def current_interval(self) -> int:
        """Optimizer steps from the last scheduled stage to the next one."""
        return self._interval_now

    def __repr__(self) -> str:
        return (
            f"FastForward(interval={self.interval}, warmup={self.warmup}, max_tau={self.max_tau}, "
            f"max_tau_ratio={self.max_tau_ratio}, adaptive_interval={self.adaptive_interval}, "
            f"patience={self.patience}, search={_search_name(self.search)!r}, "
            f"active={self.active},\n"
            f"{self.optimizer!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups: copies would lose us.
        return dict(self.__dict__)

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
        stage_due = self._stage_due(self.stats.optimizer_steps + 1)
        if stage_due:
            self._snapshot_()
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.stats.optimizer_steps += 1
        if stage_due:
            self._last_scheduled_step = self.stats.optimizer_steps
            self._stage()
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
        Forward is added to a run midway; the wrapper's counters then start from zero.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hooked = pre_hook(self, state_dict)
            if hooked is not None:
                state_dict = hooked
        base_state = dict(state_dict)
        wrapper_state = base_state.pop(_keys.WRAPPER, None)
        # Checked before anything is loaded, so that a rejected dict changes nothing.
        parsed = {} if wrapper_state is None else self._parse_wrapper_state(wrapper_state)
        self.optimizer.load_state_dict(base_state)
        # Optimizer.load_state_dict replaces the base's containers with new objects.
        self._share_base_containers()
        if wrapper_state is None:
            logger.warning(
                "fastforward: the loaded state_dict has no %r entry (saved from a bare "
                "optimizer?); the Fast Forward schedule restarts from step 0",
                _keys.WRAPPER,
            )
        else:
            for name, value in parsed.items():
                setattr(self, name, value)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _share_base_containers(self) -> None:
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = self.optimizer.defaults

    def _trainable_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

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

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _snapshot_(self) -> None:
        """Before the step that a stage follows: record ``W_{n-1}`` in the Δ buffers."""
        owners = self._trainable_params()
        params = [_local_shard(p) for p in owners]
        if not _buffers_fit(owners, self._stage_owners, params, self._delta):
            _check_owned_by(owners, self.model)
            self._stage_owners = owners
            self._anchor = [torch.empty_like(p) for p in params]
            self._delta = [torch.empty_like(p) for p in params]
        self._stage_params = params
        with torch.no_grad():
            _copy_(self._delta, params, foreach=self.foreach)

    # A stage is Python control flow around user code: dynamo would unroll or break on it, so a
    # compiled `step` compiles the wrapped optimizer's step and runs the stage eagerly.
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    @torch.no_grad()
    def _stage(self) -> None:
        """After step ``n``: search along Δ and land on the best point."""
        step = self.stats.optimizer_steps
        if not self._direction_usable(step):
            return
        started = time.perf_counter()
        try:
            with _eval_mode(self.model):
                result = fast_forward_stage(
                    self._stage_params,
                    self._delta,
                    self._validation_loss,
                    search=self.search,
                    max_tau=self._max_tau_now(),
                    min_improvement=self.min_improvement,
                    start=max(1, self._last_tau),
                    anchor=self._anchor,
                    foreach=self.foreach,
                )
        finally:
            seconds = time.perf_counter() - started
            self.stats.stage_seconds += seconds
        if not math.isfinite(result.loss_before):
            loss = result.loss_before
            self._skip_stage(step, f"the validation loss at W_n is {loss}", logging.WARNING)
            return
        self._record_stage(
            StageRecord(
                step, result.tau, result.loss_before, result.loss_after, result.evaluations, seconds
            )
        )

    def _direction_usable(self, step: int) -> bool:
        """Turn the snapshot into Δ; whether it is worth a stage (not all zero, finite)."""
        _delta_from_snapshot_(self._delta, self._stage_params, foreach=self.foreach)
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
        loss = _as_loss(value)
        return _mean_across_ranks(loss, self._collective_device(), self.process_group)

    def _collective_device(self) -> torch.device:
        return _collective_device(self.process_group, self._stage_params[0].device)

    def _skip_stage(self, step: int, reason: str, level: int) -> None:
        self.stats.skipped_stages += 1
        logger.log(level, "fastforward: no stage after step %d: %s", step, reason)

    def _record_stage(self, record: StageRecord) -> None:
        stats = self.stats
        stats.stages += 1
        stats.simulated_steps += record.tau
        stats.history.append(record)
        self._last_tau = record.tau
        self._adapt_interval(record.tau)
        logger.info(
            "fastforward: stage after step %d: tau=%d, val loss %.6g -> %.6g (%d evaluations)",
            record.step,
            record.tau,
            record.loss_before,
            record.loss_after,
            record.evaluations,
        )
        self._failed_stages_in_a_row = self._failed_stages_in_a_row + 1 if record.tau == 0 else 0
        if self.patience is not None and self._failed_stages_in_a_row >= self.patience:
            self._give_up(record.step)
        if self.on_stage is not None:
            self.on_stage(record)

    def _adapt_interval(self, tau: int) -> None:
        if self.adaptive_interval is None:
            return
        shortest, longest = self.adaptive_interval
        if tau >= self._interval_now:
            self._interval_now = max(shortest, self._interval_now // 2)
        elif tau <= 1:
            self._interval_now = min(longest, self._interval_now * 2)

    def _give_up(self, step: int) -> None:
        self._gave_up = True
        self.stats.gave_up_at_step = step
        self._stage_owners, self._stage_params, self._anchor, self._delta = [], [], [], []
        logger.info(
            "fastforward: %d stages in a row accepted tau=0; Fast Forward is off from step %d on",
            self._failed_stages_in_a_row,
            step,
        )

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
            },
            _keys.ENABLED: self.enabled,
            _keys.GAVE_UP: self._gave_up,
            _keys.FAILED_STAGES_IN_A_ROW: self._failed_stages_in_a_row,
            _keys.LAST_TAU: self._last_tau,
            _keys.INTERVAL_NOW: self._interval_now,
            _keys.LAST_SCHEDULED_STEP: self._last_scheduled_step,
            _keys.STATS: self.stats.to_dict(),
        }

    def _parse_wrapper_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The attributes a saved wrapper state sets, all checked; nothing is changed yet."""
        version = state.get(_keys.VERSION)
        if version != _keys.FORMAT_VERSION:
            raise ValueError(
                f"fastforward: state_dict format version {version!r} is not supported "
                f"(this version reads {_keys.FORMAT_VERSION})"
            )
        try:
            hyperparameters: dict[str, Any] = dict(state[_keys.HYPERPARAMETERS])
            # Absent from dicts saved before these options existed: both were off.
            hyperparameters.setdefault("max_tau_ratio", None)
            hyperparameters.setdefault("adaptive_interval", None)
            hyperparameters["search"] = self._saved_search(hyperparameters["search"])
            _check_hyperparameters(**hyperparameters)
            interval, warmup = hyperparameters["interval"], hyperparameters["warmup"]
            bounds = hyperparameters["adaptive_interval"]
            if bounds is not None:
                bounds = hyperparameters["adaptive_interval"] = tuple(bounds)
            stats = FastForwardStats.from_dict(state[_keys.STATS])
            steps_since_warmup = max(0, stats.optimizer_steps - warmup)
            parsed = {
                **hyperparameters,
                "enabled": bool(state[_keys.ENABLED]),
                "_gave_up": bool(state[_keys.GAVE_UP]),
                "_failed_stages_in_a_row": int(state[_keys.FAILED_STAGES_IN_A_ROW]),
                "_last_tau": int(state[_keys.LAST_TAU]),
                "_interval_now": int(state.get(_keys.INTERVAL_NOW, interval)),
                "_last_scheduled_step": int(
                    state.get(
                        _keys.LAST_SCHEDULED_STEP,
                        warmup + steps_since_warmup // interval * interval,
                    )
                ),
                "stats": stats,
            }
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"fastforward: the {_keys.WRAPPER!r} entry of the state_dict is malformed: "
                f"{error!r}"
            ) from error
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


def _check_kinds(optimizer: object, model: object, val_closure: object, on_stage: object) -> None:
    if isinstance(optimizer, FastForward):
        raise TypeError("fastforward: optimizer is already a FastForward; wrap the bare optimizer")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            "fastforward: optimizer must be a torch.optim.Optimizer, "
            f"got {type(optimizer).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastforward: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(val_closure):
        raise TypeError(
            "fastforward: val_closure must be a zero-argument callable returning the validation "
            f"loss, got {type(val_closure).__name__}"
        )
    if on_stage is not None and not callable(on_stage):
        raise TypeError(
            f"fastforward: on_stage must be callable or None, got {type(on_stage).__name__}"
        )


def _check_owned_by(params: list[Tensor], model: nn.Module) -> None:
    """A stage evaluates ``model``, so it must move the model's own tensors.

    Fails when the optimizer holds copies, e.g. flat fp32 partitions that DeepSpeed ZeRO (also
    through accelerate) copies into the model only after ``step()`` returns.
    """
    owned = {id(p) for p in model.parameters()}
    strangers = sum(id(p) not in owned for p in params)
    if strangers:
        raise RuntimeError(
            f"fastforward: {strangers} of the optimizer's {len(params)} trainable tensors are not "
            "parameters of `model`, so a stage would evaluate stale weights (DeepSpeed ZeRO and "
            "master-weight optimizers keep such copies); build the optimizer on "
            "model.parameters() and use DDP or FSDP"
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
) -> None:
    _check_int("interval", interval, 1)
    _check_int("warmup", warmup, 0)
    _check_int("max_tau", max_tau, 1)
    if max_tau_ratio is not None:
        if isinstance(max_tau_ratio, bool) or not isinstance(max_tau_ratio, (int, float)):
            raise TypeError(
                "fastforward: max_tau_ratio must be a float or None, "
                f"got {type(max_tau_ratio).__name__}"
            )
        if not 0.0 < max_tau_ratio < math.inf:
            raise ValueError(
                f"fastforward: max_tau_ratio must be positive and finite, got {max_tau_ratio}"
            )
    if adaptive_interval is not None:
        _check_interval_bounds(adaptive_interval, interval)
    if patience is not None:
        _check_int("patience", patience, 1)
    _check_search(search)
    _check_min_improvement(min_improvement)


def _check_interval_bounds(bounds: object, interval: object) -> None:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(
            "fastforward: adaptive_interval must be a (shortest, longest) pair of ints or None, "
            f"got {bounds!r}"
        )
    shortest, longest = bounds
    _check_int("adaptive_interval[0]", shortest, 1)
    _check_int("adaptive_interval[1]", longest, 1)
    if not shortest <= interval <= longest:
        raise ValueError(
            f"fastforward: adaptive_interval {tuple(bounds)} must satisfy shortest <= interval "
            f"({interval}) <= longest"
        )


def _accepts_keyword(function: Callable[..., object], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _as_loss(value: object) -> float:
    """The validation loss as a float; ``TypeError`` for anything but a scalar."""
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise TypeError(
                "fastforward: val_closure must return a Python number or a 0-dim tensor, got a "
                f"tensor of shape {tuple(value.shape)}; reduce it, e.g. with .mean()"
            )
        return float(value.detach())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(
        "fastforward: val_closure must return a Python number or a 0-dim tensor, "
        f"got {type(value).__name__}"
    )


def _buffers_fit(
    owners: list[Tensor], previous_owners: list[Tensor], params: list[Tensor], buffers: list[Tensor]
) -> bool:
    """Whether ``buffers``, made for ``previous_owners``, can serve ``owners`` (shards ``params``).

    ``model.to(...)`` changes a parameter's device or dtype in place, so identity is not enough.
    """
    return len(owners) == len(previous_owners) and all(
        owner is previous and p.shape == b.shape and p.dtype == b.dtype and p.device == b.device
        for owner, previous, p, b in zip(owners, previous_owners, params, buffers, strict=True)
    )
