"""``optimum-cli amoeba ...``: the ``amoeba`` commands under Optimum's CLI.

Registered by ``optimum/commands/register/register_amoeba.py``. Every leaf forwards its raw
arguments to the click command of the same name, so options, help and errors are exactly those of
``amoeba`` (``optimum-cli amoeba prune --help`` shows ``amoeba prune --help``).

This module must stay light: ``optimum-cli`` imports it on every start, for every user, so it
imports nothing from amoeba_plugin (whose import pulls in transformers) until a command runs. The
register file loads it by path for the same reason.
"""
from __future__ import annotations

import argparse

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

#: flags of the ``amoeba`` group itself; accepted after the subcommand too
_GROUP_FLAGS = ("--debug", "-q", "--quiet")


def forward(command: str, argv: list[str]) -> None:
    """Run ``amoeba <command> <argv>``; exits like the ``amoeba`` script (status 2 on a user error)."""
    from amoeba_plugin.cli.main import main

    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    group = [a for a in argv if a in _GROUP_FLAGS]
    rest = [a for a in argv if a not in _GROUP_FLAGS]
    main([*group, command, *rest], prog_name="optimum-cli amoeba")


class _ForwardingCommand(BaseOptimumCLICommand):
    """A leaf whose parser takes every remaining argument verbatim (no argparse options, no -h)."""

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser):
        # argparse would reject options it does not know (and answer -h itself); with no prefix
        # characters every argument is positional, so the click command parses them all
        parser.prefix_chars = "\0"
        parser.add_argument("argv", nargs=argparse.REMAINDER, help="arguments of the amoeba command")

    def run(self):
        forward(self.COMMAND.name, getattr(self.args, "argv", None) or [])


class _RunCommand(_ForwardingCommand):
    """``optimum-cli amoeba run COMMAND ...``: any ``amoeba`` command, including those plugins add
    (``amoeballm``, ``extract``, ...), whose names this light module cannot know without importing
    the plugins."""

    def run(self):
        from amoeba_plugin.cli.main import main

        argv = list(getattr(self.args, "argv", None) or [])
        if argv[:1] == ["--"]:
            argv = argv[1:]
        if not argv or argv[0].startswith("-") and argv[0] not in _GROUP_FLAGS:
            main(["--help"], prog_name="optimum-cli amoeba run")
            return
        group = [a for a in argv if a in _GROUP_FLAGS]
        rest = [a for a in argv if a not in _GROUP_FLAGS]
        main([*group, *rest], prog_name="optimum-cli amoeba run")


def _leaf(name: str, help: str) -> CommandInfo:
    cls = type(f"Amoeba{name.capitalize()}Command", (_ForwardingCommand,), {"__doc__": help})
    return CommandInfo(name=name, help=help, subcommand_class=cls)


class AmoebaCommand(BaseOptimumCLICommand):
    """``optimum-cli amoeba``: a group of the ``amoeba`` commands."""

    COMMAND = CommandInfo(name="amoeba", help="Structured pruning of causal LMs (amoeba-plugin); see `amoeba --help`.")
    SUBCOMMANDS = (
        _leaf("prune", "Prune a model to a budget and export it (amoeba prune --help)."),
        _leaf("recover", "Heal a pruned model by distillation from its source model (amoeba recover --help)."),
        _leaf("inspect", "Show the prunable structure of a model."),
        _leaf("plugins", "List amoeba plugins and what they registered."),
        _leaf("methods", "List pruning methods."),
        _leaf("eval", "Perplexity of a model, optionally with a plan applied."),
        _leaf("export", "Apply a plan to a model and export the result."),
        _leaf("fetch", "Download a model into the cache (smollm2-135m)."),
        _leaf("tasks", "List the packaged lm-eval tasks."),
        CommandInfo(name="run", help="Any amoeba command, including plugin commands: run amoeballm train BUNDLE, "
                                     "run extract BUNDLE --budget 0.5 -o OUT.", subcommand_class=_RunCommand),
    )


__all__ = ["AmoebaCommand", "forward"]
