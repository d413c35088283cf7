"""The wrapper's hyperparameters and its schedule, as data.

:class:`Config` is the one source of the hyperparameters: their checks, their ``repr`` and their
checkpoint entry. :class:`Schedule` is what changes between stages: when the next one is due, how
far it may go, and the give-up counter. Both turn into plain dicts for ``state_dict()``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

from fastforward._checks import (
    MAX_TAU_LIMIT,
    _check_bool,
    _check_cost_ratio,
    _check_delta_span,
    _check_int,
    _check_interval_bounds,
    _check_max_tau_ratio,
    _check_min_improvement,
)
from fastforward._search import (
    DEFAULT_SEARCH,
    SEARCHES,
    SearchStrategy,
    _check_search,
    _search_name,
)
from fastforward._stage import DEFAULT_MIN_IMPROVEMENT


@dataclass(frozen=True)
class Config:
    """The hyperparameters of :class:`~fastforward.FastForward` (documented there), checked.

    Construction checks every field, naming the argument it rejects, and stores plain Python
    values (``int``, ``float``, ``str``: numpy scalars and ``str`` enums are converted), so that
    checkpoints load with ``torch.load(weights_only=True)``.
    """

    interval: int = 6
    warmup: int = 0
    max_tau: int = 1000
    max_tau_ratio: float | None = None
    adaptive_interval: tuple[int, int] | None = None
    patience: int | None = 3
    search: str | SearchStrategy = DEFAULT_SEARCH
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    delta_span: str = "interval"
    cost_aware: bool = True
    cost_ratio: float | None = None

    def __post_init__(self) -> None:
        interval = _check_int("interval", self.interval, 1)
        _check_search(self.search)
        bounds = self.adaptive_interval
        checked = {
            "interval": interval,
            "warmup": _check_int("warmup", self.warmup, 0),
            "max_tau": _check_int("max_tau", self.max_tau, 1, MAX_TAU_LIMIT),
            "max_tau_ratio": _check_max_tau_ratio(self.max_tau_ratio),
            "adaptive_interval": None
            if bounds is None
            else _check_interval_bounds(bounds, interval),
            "patience": None if self.patience is None else _check_int("patience", self.patience, 1),
            # A str subclass (an enum) is stored as the plain string it equals.
            "search": str.__str__(self.search) if isinstance(self.search, str) else self.search,
            "min_improvement": _check_min_improvement(self.min_improvement),
            "delta_span": _check_delta_span(self.delta_span),
            "cost_aware": _check_bool("cost_aware", self.cost_aware),
            "cost_ratio": _check_cost_ratio(self.cost_ratio),
        }
        if checked["delta_span"] == "interval" and bounds is not None:
            raise ValueError(
                "fastforward: delta_span='interval' (the default) cannot be combined with "
                "adaptive_interval (which resizes the interval that Δ spans); pass "
                "delta_span='step' with adaptive_interval"
            )
        ratio = cast("float | None", checked["max_tau_ratio"])
        if checked["delta_span"] == "interval" and ratio is not None and ratio < 1:
            raise ValueError(
                f"fastforward: max_tau_ratio must be at least 1 with delta_span='interval' (the "
                f"default), got {ratio}: τ counts whole intervals there, so no stage can keep a "
                "cap of less than one interval's steps; pass delta_span='step' for a smaller cap"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def delta_steps(self) -> int:
        """Optimizer steps that Δ spans, so one unit of τ: 1, or ``interval``."""
        return self.interval if self.delta_span == "interval" else 1

    def arguments(self) -> str:
        """``name=value, ...`` in the order of the signature, the search by its name."""
        return ", ".join(f"{name}={value!r}" for name, value in self._named_fields().items())

    def changes_to(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """``{name: (self's value, other's)}`` for each field that differs, searches by name."""
        mine, theirs = self._named_fields(), other._named_fields()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entry: plain values, the search by its name (see ``_search_name``)."""
        saved = self._named_fields()
        if self.adaptive_interval is not None:
            saved["adaptive_interval"] = list(self.adaptive_interval)
        return saved

    @classmethod
    def from_dict(cls, saved: dict[str, Any], own_search: str | SearchStrategy) -> Config:
        """Inverse of :meth:`to_dict`; ``own_search`` is the loading wrapper's strategy.

        Raises:
            KeyError: a field is missing; those added after the first checkpoint format may
                be, and are then off (as they were when it was written).
            ValueError, TypeError: a field is invalid, or the checkpoint names a strategy
                that is neither built in nor ``own_search``.
        """
        for field in dataclasses.fields(cls):
            if field.name not in saved and field.name not in _ADDED_AFTER_FORMAT_1:
                raise KeyError(field.name)
        saved = {**_OFF_BEFORE_THEY_EXISTED, **saved}
        return cls(**{**saved, "search": _saved_search(saved["search"], own_search)})

    def _named_fields(self) -> dict[str, Any]:
        """Every field by name (not ``asdict``: it would deep-copy a callable search)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["search"] = _search_name(self.search)
        return values


# Their values in a checkpoint written before they existed: off, not today's defaults.
_OFF_BEFORE_THEY_EXISTED = {
    "max_tau_ratio": None, "adaptive_interval": None, "delta_span": "step", "cost_aware": False,
    "cost_ratio": None,
}  # fmt: skip
_ADDED_AFTER_FORMAT_1 = tuple(_OFF_BEFORE_THEY_EXISTED)


def _saved_search(name: object, own_search: str | SearchStrategy) -> object:
    """The strategy a checkpoint names: a built-in, or the loading wrapper's own callable."""
    if not isinstance(name, str) or name in SEARCHES:
        return name
    if callable(own_search) and _search_name(own_search) == name:
        return own_search
    raise ValueError(
        f"fastforward: the checkpoint was saved with the search strategy {name!r}; pass "
        "that callable as search= to the wrapper that loads it"
    )


@dataclass
class Schedule:
    """When the next stage runs and how far it may go; whether Fast Forward gave up.

    The field names are the keys of the checkpoint entry.
    """

    interval_now: int  # changes only with adaptive_interval
    last_scheduled_step: int  # the step after which the last stage was due
    last_tau: int = 0
    failed_stages_in_a_row: int = 0
    gave_up: bool = False

    @classmethod
    def start(cls, config: Config) -> Schedule:
        return cls(config.interval, config.warmup)

    def due(self, step: int, config: Config) -> bool:
        """Whether a stage runs after optimizer step ``step`` (Fast Forward being active)."""
        if step <= config.warmup:
            return False
        if config.adaptive_interval is None:
            return (step - config.warmup) % config.interval == 0
        return step - self.last_scheduled_step >= self.interval_now

    def snapshot_due(self, step: int, config: Config) -> bool:
        """Whether ``W`` is copied before optimizer step ``step``: ``Δ`` of a stage starts there.

        That is the due step itself, or with ``delta_span="interval"`` the first step of the
        interval that ends with one (its W is where the previous stage landed).
        """
        return self.due(step + config.delta_steps - 1, config)

    def max_tau(self, config: Config) -> int:
        """``max_tau``, and with ``max_tau_ratio`` the most Δs whose steps fit in its cap.

        A stage simulates ``τ * delta_steps`` steps; the cap is
        ``max(1, floor(max_tau_ratio * interval_now))`` of them (``Config`` makes it at least
        one interval with ``delta_span="interval"``, so that τ >= 1 keeps it).
        """
        if config.max_tau_ratio is None:
            return config.max_tau
        ratio_steps = config.max_tau_ratio * self.interval_now
        if ratio_steps >= config.max_tau * config.delta_steps:
            return config.max_tau  # also where the product is too large to floor
        steps = max(1, math.floor(ratio_steps))
        return max(1, steps // config.delta_steps)

    def start_tau(self, max_tau: int) -> int:
        """The strategy's ``start`` hint: the previous stage's τ, at least 1."""
        return min(max(1, self.last_tau), max_tau)

    def record(self, tau: int, config: Config) -> bool:
        """Count a stage that accepted ``tau``; whether ``patience`` has run out."""
        self.last_tau = tau
        if config.adaptive_interval is not None:
            shortest, longest = config.adaptive_interval
            if tau >= self.interval_now:
                self.interval_now = max(shortest, self.interval_now // 2)
            elif tau <= 1:
                self.interval_now = min(longest, self.interval_now * 2)
        self.failed_stages_in_a_row = self.failed_stages_in_a_row + 1 if tau == 0 else 0
        return config.patience is not None and self.failed_stages_in_a_row >= config.patience

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], config: Config, optimizer_steps: int) -> Schedule:
        """Inverse of :meth:`to_dict`, checked against ``config``.

        ``interval_now`` and ``last_scheduled_step`` may be absent (checkpoints from before
        ``adaptive_interval``): they follow from the fixed schedule.

        Raises:
            ValueError, TypeError: naming the field.
        """
        since_warmup = max(0, optimizer_steps - config.warmup)
        last = config.warmup + since_warmup // config.interval * config.interval
        schedule = cls(
            interval_now=_saved_int(saved, "interval_now", 0, default=config.interval),
            last_scheduled_step=_saved_int(saved, "last_scheduled_step", 0, default=last),
            last_tau=_saved_int(saved, "last_tau", 0),
            failed_stages_in_a_row=_saved_int(saved, "failed_stages_in_a_row", 0),
            gave_up=_saved_bool(saved, "gave_up"),
        )
        bounds = config.adaptive_interval
        if bounds is None:
            schedule.interval_now = config.interval
        elif not bounds[0] <= schedule.interval_now <= bounds[1]:
            raise ValueError(
                f"fastforward: the saved interval_now {schedule.interval_now} is outside "
                f"adaptive_interval {bounds}"
            )
        return schedule


def _saved_bool(state: dict[str, Any], key: str) -> bool:
    value = state[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be a bool, got {value!r}")
    return value


def _saved_int(state: dict[str, Any], key: str, low: int, default: int | None = None) -> int:
    value = state.get(key, default) if default is not None else state[key]
    return _check_int(key, value, low)
