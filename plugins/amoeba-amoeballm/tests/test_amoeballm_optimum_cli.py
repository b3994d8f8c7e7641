"""`optimum-cli amoeba run amoeballm ...`: the host's optimum-cli register file reaches this plugin's
commands (the register file is the installed host's, found in the optimum.commands.register namespace)."""
import pytest

pytest.importorskip("optimum.commands.base")


def _root_with_amoeba():
    from optimum.commands.base import RootOptimumCLICommand
    from optimum.commands.optimum_cli import register_optimum_cli_subcommand
    from optimum.commands.register.register_amoeba import REGISTER_COMMANDS

    root = RootOptimumCLICommand("optimum-cli", usage="optimum-cli")
    register_optimum_cli_subcommand(REGISTER_COMMANDS[0], parent_command=root)
    return root


def test_run_reaches_plugin_commands(capsys):
    root = _root_with_amoeba()
    args = root.parser.parse_args(["amoeba", "run", "amoeballm", "select", "--help"])
    with pytest.raises(SystemExit) as exit_:
        args.func(args).run()
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "optimum-cli amoeba run amoeballm select" in out and "--min-layers" in out
