"""User-facing errors: every one names the problem and the fix, so the CLI can print one line."""
from __future__ import annotations


class AmoebaError(Exception):
    """Base class. ``str(err)`` is ``"<problem>. Fix: <fix>"``; the CLI prints it without a traceback."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(f"{self.problem}. Fix: {fix}" if fix else self.problem)


class UnsupportedModelError(AmoebaError):
    """The model's family has no architecture adapter."""


class ModelNotFoundError(AmoebaError):
    """A model name or path that resolves to nothing loadable."""


class InvalidBudgetError(AmoebaError):
    """A budget outside (0, 1], or one a method cannot meet."""


class PlanError(AmoebaError):
    """A plan that does not fit the model it is applied to, or is internally inconsistent."""


class RegistrationError(AmoebaError):
    """A plugin registered something twice, or under a name another plugin owns."""


class UnknownNameError(AmoebaError):
    """A method, metric, exporter, dataset or evaluator name that no plugin registered."""


class DataError(AmoebaError):
    """Calibration or evaluation text that is missing, too short, or not allowed for this use."""


class CorruptFileError(AmoebaError):
    """A weights or config file that cannot be read."""
