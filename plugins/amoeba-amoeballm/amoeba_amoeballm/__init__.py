"""AmoebaLLM (Fu et al., NeurIPS 2024) as an amoeba-plugin backend, registered through the
``amoeba_plugin`` entry-point group like any third-party plugin.

* stage 1, :mod:`.select`: the DP over layers (:mod:`.depth`, scored by :mod:`.scorers`) and nested
  FLAP width masks with bias compensation (:mod:`.width`), stored as a :class:`.shapes.SelectionTable`;
* stage 2, :mod:`.train`: one-for-all fine-tuning of SMoL adapters (:mod:`.smol`) with sandwich
  sampling, in-place distillation and loss-magnitude balancing, under ``accelerate``;
* :mod:`.bundle` holds both; :mod:`.extract` turns a bundle and a budget into a standalone model.

Hooks: the ``amoeballm`` method (stage 1 in the common prune API), the ``amoeba amoeballm`` commands
and ``amoeba extract``, and ``amoeba_load_model`` so lm-eval's ``amoeba`` model loads bundles.
"""
from amoeba_plugin import hookimpl


@hookimpl
def amoeba_register_methods(register):
    from .method import AmoebaLLMMethod

    register(AmoebaLLMMethod())


@hookimpl
def amoeba_register_commands(cli):
    from amoeba_plugin.cli.options import lazy_command  # the command module loads only when it runs

    cli.add_command(lazy_command("amoeballm", "amoeba_amoeballm.cli:amoeballm", help=(
        "AmoebaLLM one-for-all bundles: select, train, shapes, latency; then `amoeba extract`.")))
    cli.add_command(lazy_command("extract", "amoeba_amoeballm.cli:extract", help=(
        "Extract a standalone model of the best shape for a budget from an AmoebaLLM bundle.")))


@hookimpl
def amoeba_load_model(spec, options):
    """``bundle=PATH,shape=6x0.75`` or ``bundle=PATH,budget=0.5`` in lm-eval's ``--model_args``."""
    from .bundle import is_bundle

    if not is_bundle(spec):
        return None
    from amoeba_plugin.errors import AmoebaError

    from .extract import extract

    extra = sorted(set(options) - {"shape", "budget", "dtype", "device"})
    if extra:
        raise AmoebaError(f"unknown option(s) for an AmoebaLLM bundle: {', '.join(extra)}",
                          "pass shape=DEPTHxWIDTH or budget=... (plus dtype, device)")
    shape, budget = options.get("shape"), options.get("budget")
    if shape is None and budget is None:
        shape = "largest"
    if shape == "largest":
        from .bundle import Bundle

        shape = str(Bundle.load(spec).table.largest)
    result = extract(spec, budget=budget, shape=shape, dtype=options.get("dtype"), device=options.get("device"))
    return result.model, result.tokenizer
