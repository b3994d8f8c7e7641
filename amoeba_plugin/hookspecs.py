"""Hook specifications. Plugins implement these with :data:`hookimpl`.

Registration hooks receive a ``register`` callback (as in simonw's ``llm``): a plugin may call it
any number of times, and the host refuses a name that another plugin already owns. Every hook is
documented in ``docs/hooks.md``; a test fails when a hook lacks documentation or a test.
"""
from __future__ import annotations

import pluggy

PROJECT = "amoeba_plugin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def amoeba_register_methods(register):
    """Register pruning methods: ``register(method)`` with a :class:`amoeba_plugin.methods.Method`."""


@hookspec
def amoeba_register_metrics(register):
    """Register importance metrics: ``register(metric)`` with a :class:`amoeba_plugin.metrics.Metric`."""


@hookspec
def amoeba_register_exporters(register):
    """Register exporters: ``register(exporter)`` with a :class:`amoeba_plugin.export.Exporter`."""


@hookspec
def amoeba_register_architectures(register):
    """Register model-family adapters: ``register(adapter)`` with an :class:`amoeba_plugin.anatomy.ArchitectureAdapter`."""


@hookspec
def amoeba_register_evaluators(register):
    """Register evaluators: ``register(evaluator)`` with an :class:`amoeba_plugin.eval.Evaluator`."""


@hookspec
def amoeba_register_datasets(register):
    """Register named text sources: ``register(source)`` with a :class:`amoeba_plugin.data.TextSource`."""


@hookspec
def amoeba_register_commands(cli):
    """Add subcommands to the ``amoeba`` click group ``cli`` (``@cli.command()``)."""


@hookspec
def amoeba_on_plan(plan, context):
    """Observe (or amend in place) a plan right after a method produced it.

    ``context`` is a dict with at least ``method``, ``budget`` and ``anatomy``.
    """


@hookspec
def amoeba_on_progress(event):
    """Observe progress of a long step: ``event`` is a :class:`amoeba_plugin.progress.ProgressEvent`."""


@hookspec
def amoeba_on_export(directory, plan, exporter):
    """Called after an export was written (atomically) to ``directory``."""


@hookspec(firstresult=True)
def amoeba_select_evaluator(method, context):
    """Return an :class:`~amoeba_plugin.eval.Evaluator` to score candidates for ``method``, or None to pass.

    The first non-None answer wins; methods fall back to their own default evaluator.
    """


@hookspec(firstresult=True)
def amoeba_load_model(spec, options):
    """Load a model the host cannot load by itself (an AmoebaLLM one-for-all bundle, say).

    ``spec`` is the string the user gave (``bundle=SPEC`` in the ``--model_args`` of the lm-eval model
    ``amoeba``); ``options`` is a dict with the other model_args (e.g. ``shape``) plus ``dtype`` (a
    ``torch.dtype`` or None for the default) and ``device``. Return ``(model, tokenizer)``, or None
    for a spec you do not recognise. The first non-None answer wins.
    """
