"""Sheared-LLaMA (Xia et al., ICLR 2024) as an amoeba-plugin backend, registered through the
``amoeba_plugin`` entry-point group like any third-party plugin.

* targeted structured pruning (:mod:`.prune`): hard-concrete masks (:mod:`.hard_concrete`,
  :mod:`.masks`) on layers, KV groups, queries per group, MLP channels and hidden channels, applied
  through hooks (:mod:`.masked`), driven to an exact shape (:mod:`.target`) by a Lagrangian min-max;
  then top-k gates folded into the weights and sliced (:mod:`.fold`) into a stock model;
* dynamic batch loading (:mod:`.domains`, :mod:`.dynamic`, :mod:`.reference`);
* continued pre-training (:mod:`.pretrain`), both stages on one resumable ``accelerate`` loop
  (:mod:`.trainer`), run end to end by :mod:`.run`.

Hooks: the ``sheared`` method (pruning in the common API), the ``amoeba sheared`` commands, and the
document-split text sources ``brown-split`` and ``moby-dick-split`` (training domains).
"""
from amoeba_plugin import hookimpl


@hookimpl
def amoeba_register_methods(register):
    from .method import ShearedMethod

    register(ShearedMethod())


@hookimpl
def amoeba_register_commands(cli):
    from amoeba_plugin.cli.options import lazy_command  # the command module loads only when it runs

    cli.add_command(lazy_command("sheared", "amoeba_sheared.cli:sheared", help=(
        "Sheared-LLaMA: prune to an exact shape (L0 masks + Lagrangian), then continued pre-training.")))


@hookimpl
def amoeba_register_datasets(register):
    from .domains import split_sources

    for source in split_sources():
        register(source)
