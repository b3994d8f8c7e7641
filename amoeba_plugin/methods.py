"""The method contract. A method (a backend) turns a model, calibration data and a Budget into a
Plan (and, if it changes weights, a patch or a new model). Register instances through
``amoeba_register_methods``."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .anatomy import Anatomy
from .budget import Budget
from .errors import DataError, InvalidBudgetError
from .options import MethodOptions, build_options, option, options_class_from_dict  # noqa: F401 (re-exported)
from .plan import Plan


@dataclass
class PruningContext:
    """Everything a method gets for one run."""

    model: Any
    tokenizer: Any
    anatomy: Anatomy
    budget: Budget
    #: the run's options: a mapping as the user gave them, or the instance ``preflight`` built;
    #: :meth:`Method.resolve_options` returns the typed instance either way
    options: Mapping | MethodOptions = field(default_factory=dict)
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
    ``options_class`` (a :class:`~amoeba_plugin.options.MethodOptions` dataclass whose fields carry
    each option's default, help text and checks); implement :meth:`prune`, reading the options from
    :meth:`resolve_options`.

    The host runs ``prune`` through :func:`amoeba_plugin.pipeline.run_method`, which seeds torch,
    calls :meth:`check_budget` first and records method, budget, seed and the calibration text in the
    plan's provenance afterwards; ``prune`` only decides (and records its own choices)."""

    name: str = ""
    description: str = ""
    capabilities: frozenset[str] = frozenset()
    budget_kinds: tuple[str, ...] = ("params", "nonembed", "count", "macs")
    options_class: ClassVar[type[MethodOptions]] = MethodOptions

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        legacy = cls.__dict__.get("default_options")
        if isinstance(legacy, Mapping) and "options_class" not in cls.__dict__:
            # a method written before typed options: its dict becomes an untyped options class
            warnings.warn(f"{cls.__name__}: declare an options dataclass as `options_class` instead of a "
                          "`default_options` dict", DeprecationWarning, stacklevel=2)
            cls.options_class = options_class_from_dict(f"{cls.__name__}Options", legacy)

    @property
    def default_options(self) -> dict:
        """Read-only: every option's default, derived from :attr:`options_class` (for code that still
        reads a dict; the dataclass is the source of truth)."""
        return self.options_class.defaults()

    def check_budget(self, budget: Budget) -> None:
        if budget.kind not in self.budget_kinds:
            raise InvalidBudgetError(f"method '{self.name}' cannot meet a '{budget.kind}' budget",
                                     f"use one of: {', '.join(self.budget_kinds)}")

    def build_options(self, values: Mapping | MethodOptions | None = None) -> MethodOptions:
        """The typed options of a run: :attr:`options_class` built from ``values`` (names checked,
        values coerced and validated). ``preflight`` calls it before the model loads, so a bad option
        costs no loading."""
        options = build_options(self.options_class, values, self.name)
        if type(self).check_options is not Method.check_options:  # a method that still checks values there
            self.check_options(dict(values) if isinstance(values, Mapping) else options.to_dict())
        return options

    def check_run(self, budget: Budget, options: MethodOptions, seed: int = 0) -> None:
        """Checks of a run that need its budget and options together but no model: ``preflight`` calls
        this before anything loads (e.g. that a checkpoint to resume was made with these settings).
        Raise an :class:`~amoeba_plugin.errors.AmoebaError`; the default checks nothing."""

    def resolve_options(self, context: PruningContext) -> MethodOptions:
        """The run's typed options (``context.options`` over the defaults); read ``options.steps`` etc."""
        return self.build_options(context.options)

    def check_options(self, options: Mapping) -> None:
        """Raise an :class:`~amoeba_plugin.errors.AmoebaError` for a bad option. Kept for methods
        written before typed options (an override still runs whenever the options are built); new
        checks belong in the options dataclass' ``__post_init__``."""
        build_options(self.options_class, options, self.name)

    def calibration_windows(self, context: PruningContext):
        """The run's calibration windows, or the standard error when calibration is off."""
        if context.calibration is None:
            raise DataError(f"method '{self.name}' needs calibration data and none was given",
                            "pass a calibration source (e.g. --calibration sotu:train)")
        return context.calibration()

    def prune(self, context: PruningContext) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError
