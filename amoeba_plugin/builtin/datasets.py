"""Built-in text sources: sotu (train, validation), brown (test) and moby-dick (test)."""
from __future__ import annotations

from ..data import builtin_sources
from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_datasets(register):
    for source in builtin_sources():
        register(source)
