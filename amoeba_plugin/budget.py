"""Budgets: how small the pruned model must be.

One of: a fraction of parameters (all parameters by default, or non-embedding ones), an absolute
parameter count, a fraction of MACs per token, an exact target shape (Sheared-LLaMA style), or a
measured decode latency on this machine (a fraction of the dense model's, or milliseconds per token):
latency needs a table of measurements, so only methods that build one accept it.
Methods state which kinds they accept and reject the others with a clear error.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .cost import CostModel
from .errors import InvalidBudgetError

#: how far below its budget a method may land and still count as on budget (a fraction of the target):
#: every method must land in ``[1 - FILL_TOLERANCE, 1]`` of it, never above
FILL_TOLERANCE = 0.02

KINDS = ("params", "nonembed", "count", "macs", "shape", "latency", "latency_ms")
SHAPE_KEYS = ("layers", "heads", "kv_heads", "intermediate", "hidden")
_FIX = ("give the fraction to keep in (0, 1], e.g. --budget 0.5; or params=0.5, nonembed=0.6, macs=0.5, "
        "count=3e6, shape=layers:6,heads:4,kv_heads:2,intermediate:320, latency=0.6 (of the dense model's), "
        "latency=8ms (per decoded token)")

_LATENCY_FIX = ("use a method or command that measures latency (e.g. `amoeba extract BUNDLE --budget latency=0.6`), "
                "or a params/macs budget")


@dataclass
class Budget:
    """``kind`` is one of :data:`KINDS`; ``value`` a ratio, a count, or (shape) a dict of SHAPE_KEYS."""

    kind: str = "params"
    value: float | int | dict = 0.5
    tolerance: float = 0.0  # how far below the target a method may land (fraction of the target)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidBudgetError(f"unknown budget kind '{self.kind}' (known: {', '.join(KINDS)})", _FIX)
        if self.kind == "shape":
            if not isinstance(self.value, dict) or not self.value or set(self.value) - set(SHAPE_KEYS):
                raise InvalidBudgetError(f"a shape budget needs keys from {SHAPE_KEYS}, got {self.value!r}", _FIX)
            if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in self.value.values()):
                raise InvalidBudgetError(f"shape sizes must be positive integers, got {self.value!r}", _FIX)
            return
        if isinstance(self.value, bool) or not isinstance(self.value, (numbers.Real, str)):
            raise InvalidBudgetError(f"budget value {self.value!r} is not a number", _FIX)
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise InvalidBudgetError(f"budget value {self.value!r} is not a number", _FIX) from None
        if not math.isfinite(value):
            raise InvalidBudgetError(f"budget value {self.value!r} is not a finite number", _FIX)
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real) \
                or not 0 <= self.tolerance < 1:
            raise InvalidBudgetError(f"budget tolerance {self.tolerance!r} is not a fraction in [0, 1)",
                                     "pass a tolerance such as 0.02 (2% below the target), or 0")
        if self.kind == "latency_ms":
            if value <= 0:
                raise InvalidBudgetError(f"a latency budget must be positive milliseconds, got {self.value}", _FIX)
            self.value = value
        elif self.kind == "count":
            if value < 1:
                raise InvalidBudgetError(f"a parameter count budget must be at least 1, got {self.value}", _FIX)
            self.value = int(value)
        elif not 0 < value <= 1:
            what = {"macs": "MACs", "latency": "the dense model's latency",
                    "nonembed": "non-embedding parameters"}.get(self.kind, "parameters")
            raise InvalidBudgetError(f"budget {self.value} is outside (0, 1]: it is the fraction of {what} to keep",
                                     _FIX)
        else:
            self.value = value

    @classmethod
    def parse(cls, text: str | float | Budget) -> Budget:
        """``0.5``, ``50%``, ``params=0.5``, ``nonembed=0.6``, ``macs=0.5``, ``count=3e6``,
        ``shape=layers:6,heads:4``, ``latency=0.6``, ``latency=8ms``."""
        if isinstance(text, Budget):
            return text
        if isinstance(text, bool) or not isinstance(text, (numbers.Real, str)):
            raise InvalidBudgetError(f"budget {text!r} is neither a number nor a budget string", _FIX)
        if isinstance(text, numbers.Real):
            return cls("params", text)
        s = str(text).strip()
        kind, sep, rest = s.partition("=")
        if not sep:
            kind, rest = "params", s
        kind = kind.strip().lower()
        if kind == "shape":
            try:
                value = {k.strip(): int(v) for k, v in (p.split(":") for p in rest.split(",") if p.strip())}
            except ValueError:
                raise InvalidBudgetError(f"cannot read the shape budget '{rest}'", _FIX) from None
            return cls("shape", value)
        rest = rest.strip()
        if kind == "latency" and rest.lower().endswith("ms"):
            kind, rest = "latency_ms", rest[:-2].strip()
        if rest.endswith("%"):
            try:
                rest = float(rest[:-1]) / 100
            except ValueError:
                raise InvalidBudgetError(f"cannot read the budget '{s}'", _FIX) from None
        return cls(kind, rest)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Budget:
        return cls(data.get("kind", "params"), data.get("value"), data.get("tolerance", 0.0))

    @property
    def is_latency(self) -> bool:
        return self.kind in ("latency", "latency_ms")

    def __str__(self) -> str:
        if self.kind == "shape":
            return "shape=" + ",".join(f"{k}:{v}" for k, v in self.value.items())
        if self.kind == "latency_ms":
            return f"latency={self.value:g}ms"
        return f"{self.kind}={self.value:g}"

    # ------------------------------------------------------------------ checks against a plan
    def bind(self, anatomy) -> BoundBudget:
        """This budget for ``anatomy``: the target, the unit costs and ``measure``/``fits``, counted once."""
        return BoundBudget(self, anatomy)

    def target(self, anatomy) -> float:
        """The ceiling in the budget's own unit (parameters or MACs) for ``anatomy``."""
        return self.bind(anatomy).target

    def measure(self, plan, anatomy) -> float:
        return self.bind(anatomy).measure(plan)

    def fits(self, plan, anatomy) -> bool:
        return self.bind(anatomy).fits(plan)


#: the cost model that counts each countable budget kind: (unit, embeddings counted)
_COUNTED = {"params": ("parameters", True), "count": ("parameters", True), "nonembed": ("parameters", False),
            "macs": ("macs", True)}


class BoundBudget:
    """A :class:`Budget` bound to one anatomy (``Budget.bind``): its target, the per-unit costs in the
    budget's unit (``costs``, a :class:`~amoeba_plugin.cost.CostModel`), and ``measure``/``fits`` that
    count a plan from those costs without rebuilding the full model's counts. A shape budget fits every
    plan and has no scalar target; a latency budget is measured, not counted (its ``costs`` is None)."""

    def __init__(self, budget: Budget, anatomy):
        self.budget, self.anatomy = budget, anatomy
        counted = _COUNTED.get(budget.kind)
        self.costs = CostModel(anatomy, counted[0], embeddings=counted[1]) if counted else None
        self._target = None
        if budget.kind == "count":
            self._target = float(budget.value)
        elif counted:
            self._target = budget.value * self.costs.full

    @property
    def kind(self) -> str:
        return self.budget.kind

    @property
    def target(self) -> float:
        """The ceiling in the budget's own unit (parameters or MACs)."""
        if self._target is None:
            self._uncounted("target")
        return self._target

    @property
    def full(self) -> int:
        """The unpruned model's cost in the budget's unit."""
        if self.costs is None:
            self._uncounted("measure")
        return self.costs.full

    def measure(self, plan) -> int:
        """``plan``'s cost in the budget's unit (exactly ``Plan.num_parameters`` or ``macs_per_token``)."""
        if self.costs is None:
            self._uncounted("measure")
        return self.costs.measure(plan)

    def fits(self, plan) -> bool:
        if self.budget.kind == "shape":
            return True
        return self.measure(plan) <= self.target

    def fill(self, plan_or_anatomy) -> float:
        """How much of the budget is used: the measured cost / the target (1.0 = exactly at the budget).

        Takes a plan of this anatomy, or the anatomy of an already pruned model (its full cost is
        counted in the same unit), so a sliced or reloaded model can be checked as well as a plan."""
        from .anatomy import Anatomy

        if isinstance(plan_or_anatomy, Anatomy):
            counted = _COUNTED.get(self.budget.kind)
            if counted is None:
                self._uncounted("measure")
            measured = CostModel(plan_or_anatomy, counted[0], embeddings=counted[1]).full
        else:
            measured = self.measure(plan_or_anatomy)
        return measured / self.target

    def on_budget(self, plan_or_anatomy, tolerance: float = FILL_TOLERANCE) -> bool:
        """Whether the fill lies within ``tolerance`` below the budget, never above it
        (``1 - tolerance <= fill <= 1``); a shape budget is met by every plan of its shape."""
        if self.budget.kind == "shape":
            return True
        return 1 - tolerance <= self.fill(plan_or_anatomy) <= 1

    def _uncounted(self, what: str):
        if self.budget.is_latency:
            raise InvalidBudgetError("a latency budget is measured, not counted", _LATENCY_FIX)
        if what == "target":
            raise InvalidBudgetError("a shape budget has no scalar target", "use Budget.value for the shape")
        raise InvalidBudgetError("a shape budget has no scalar measure", "compare shapes instead")

    def __repr__(self) -> str:
        return f"BoundBudget({self.budget}, {self.anatomy.model_type} x{self.anatomy.num_layers})"
