"""Baseline methods, registered through the ``amoeba_plugin`` entry-point group like any third-party
plugin: ``wanda-sp`` and ``random`` (uniform width), ``flap`` (global width with bias
compensation) and ``shortgpt`` (depth). The host's ``uniform-magnitude`` is the fifth baseline.

The method modules are imported inside the hook, so loading the plugin (``amoeba --help``) costs no torch."""
from amoeba_plugin import hookimpl


@hookimpl
def amoeba_register_methods(register):
    from .flap import FLAPMethod
    from .shortgpt import ShortGPTMethod
    from .uniform import RandomMethod, WandaSPMethod

    for method in (WandaSPMethod, FLAPMethod, ShortGPTMethod, RandomMethod):
        register(method())
