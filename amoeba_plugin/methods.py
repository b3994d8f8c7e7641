"""The method contract. A method (a backend) turns a model, calibration data and a Budget into a
Plan (and, if it changes weights, a patch or a new model). Register instances through
``amoeba_register_methods``."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .anatomy import Anatomy
from .budget import Budget
from .errors import AmoebaError, DataError, InvalidBudgetError
from .plan import Plan


@dataclass
class PruningContext:
    """Everything a method gets for one run."""

    model: Any
    tokenizer: Any
    anatomy: Anatomy
    budget: Budget
    options: dict = field(default_factory=dict)
    seed: int = 0
    #: returns calibration windows (LongTensor [n, seq_len]); only called by methods that need them
    calibration: Callable[[], Any] | None = None


@dataclass
class PruneResult:
    plan: Plan
    #: source-named tensors replacing or adding parameters (compensation biases, reformed weights)
    patch: dict | None = None
    #: set by methods that trained the weights: the model the plan applies to
    model: Any = None
    info: dict = field(default_factory=dict)


class Method:
    """Base class. Set ``name``, ``description``, ``capabilities``, ``budget_kinds`` and
    ``default_options``; implement :meth:`prune`.

    The host runs ``prune`` through :func:`amoeba_plugin.pipeline.run_method`, which seeds torch,
    calls :meth:`check_budget` first and records method, budget, seed and the calibration text in the
    plan's provenance afterwards; ``prune`` only decides (and records its own choices)."""

    name: str = ""
    description: str = ""
    capabilities: frozenset[str] = frozenset()
    budget_kinds: tuple[str, ...] = ("params", "nonembed", "count", "macs")
    default_options: dict = {}

    def check_budget(self, budget: Budget) -> None:
        if budget.kind not in self.budget_kinds:
            raise InvalidBudgetError(f"method '{self.name}' cannot meet a '{budget.kind}' budget",
                                     f"use one of: {', '.join(self.budget_kinds)}")

    def resolve_options(self, context: PruningContext) -> dict:
        """``default_options`` updated with the run's options, after :meth:`check_options`."""
        self.check_options(context.options or {})
        return {**self.default_options, **(context.options or {})}

    def check_options(self, options: dict) -> None:
        """Raise an :class:`AmoebaError` for a bad option. ``preflight`` calls it with the run's options
        before the model loads, so a typo costs no loading. The default refuses unknown names (so a
        typo never passes silently); override it to check values too, calling this first."""
        unknown = set(options or {}) - set(self.default_options)
        if unknown:
            raise AmoebaError(f"unknown option(s) for '{self.name}': {', '.join(sorted(unknown))}",
                              f"use only: {', '.join(self.default_options) or '(no options)'}")

    def calibration_windows(self, context: PruningContext):
        """The run's calibration windows, or the standard error when calibration is off."""
        if context.calibration is None:
            raise DataError(f"method '{self.name}' needs calibration data and none was given",
                            "pass a calibration source (e.g. --calibration sotu:train)")
        return context.calibration()

    def prune(self, context: PruningContext) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError
