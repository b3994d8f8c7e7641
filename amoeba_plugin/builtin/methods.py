"""Built-in methods: uniform width pruning (uniform-magnitude)."""
from __future__ import annotations

from ..hookspecs import hookimpl
from ..pruning.uniform import UniformWidthMethod


@hookimpl
def amoeba_register_methods(register):
    register(UniformWidthMethod())
