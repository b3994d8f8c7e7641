"""Built-in methods: uniform width pruning (uniform-magnitude)."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_methods(register):
    from ..pruning.uniform import UniformWidthMethod

    register(UniformWidthMethod())
