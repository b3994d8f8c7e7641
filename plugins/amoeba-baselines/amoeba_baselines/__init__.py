"""Baseline methods, registered through the ``amoeba_plugin`` entry-point group like any third-party
plugin: ``wanda-sp`` and ``random`` (uniform width), ``flap`` (global width with bias
compensation) and ``shortgpt`` (depth). The host's ``uniform-magnitude`` is the fifth baseline."""
from amoeba_plugin import hookimpl

from .flap import FLAPMethod
from .shortgpt import ShortGPTMethod
from .uniform import RandomMethod, WandaSPMethod


@hookimpl
def amoeba_register_methods(register):
    for method in (WandaSPMethod, FLAPMethod, ShortGPTMethod, RandomMethod):
        register(method())
