"""Built-in text sources: sotu (train, validation), brown (test) and moby-dick (test)."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_datasets(register):
    from ..data import builtin_sources

    for source in builtin_sources():
        register(source)
