"""Search for Efficient LLMs (Shen et al., NeurIPS 2024) as an amoeba-plugin backend, registered through
the ``amoeba_plugin`` entry-point group like any third-party plugin.

* :mod:`.init`: salient-weight inheritance (OBS saliency, uniform inheriting ratio from the budget);
* :mod:`.space`, :mod:`.genome`, :mod:`.operators`, :mod:`.search`: the evolutionary search over
  depth, per-KV-group head-channel masks (RoPE pairs) and MLP masks, counted exactly against the budget;
* reformation and slicing come from the host (:mod:`amoeba_plugin.pruning.reformation`, ``slice_model``).

Hooks: the ``searchllm`` method and the ``amoeba searchllm`` commands.
"""
from amoeba_plugin import hookimpl


@hookimpl
def amoeba_register_methods(register):
    from .method import SearchLLMMethod

    register(SearchLLMMethod())


@hookimpl
def amoeba_register_commands(cli):
    from amoeba_plugin.cli.options import lazy_command  # the command module loads only when it runs

    cli.add_command(lazy_command("searchllm", "amoeba_searchllm.cli:searchllm", help=(
        "Search for Efficient LLMs: OBS init, evolutionary mask search under a budget, reformation.")))
