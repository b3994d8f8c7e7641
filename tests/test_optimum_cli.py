"""`optimum-cli amoeba ...`: the guarded register file in the optimum.commands.register namespace."""
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("optimum.commands.base")

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGISTER = ROOT / "optimum" / "commands" / "register" / "register_amoeba.py"


def load_register():
    spec = importlib.util.spec_from_file_location("_test_register_amoeba", REGISTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_namespace_has_no_init_files():
    for folder in ("optimum", "optimum/commands", "optimum/commands/register"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_register_commands():
    from optimum.commands.base import BaseOptimumCLICommand

    module = load_register()
    assert module.REGISTER_COMMANDS
    command = module.REGISTER_COMMANDS[0]
    assert issubclass(command, BaseOptimumCLICommand)
    assert command.COMMAND.name == "amoeba"
    names = {c.name for c in command.SUBCOMMANDS}
    assert {"prune", "inspect", "plugins", "methods", "eval", "export", "tasks", "run"} <= names


def test_register_file_is_light():
    """optimum-cli imports the file on every start: it must not pull in transformers or torch."""
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('r', {str(REGISTER)!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "assert m.REGISTER_COMMANDS, 'empty'; "
            "heavy = [n for n in ('transformers', 'torch', 'amoeba_plugin') if n in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_register_file_never_raises(tmp_path):
    """Without amoeba_plugin importable, the file still loads and registers nothing."""
    code = ("import importlib.util, sys; sys.modules['amoeba_plugin'] = None; "
            "import importlib.util as u; u.find_spec = lambda *a, **k: None; "
            f"spec = u.spec_from_file_location('r', {str(REGISTER)!r}); m = u.module_from_spec(spec); "
            "spec.loader.exec_module(m); assert m.REGISTER_COMMANDS == []")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def _root_with_amoeba():
    from optimum.commands.base import RootOptimumCLICommand
    from optimum.commands.optimum_cli import register_optimum_cli_subcommand

    root = RootOptimumCLICommand("optimum-cli", usage="optimum-cli")
    register_optimum_cli_subcommand(load_register().REGISTER_COMMANDS[0], parent_command=root)
    return root


def test_argparse_forwards_options_to_click(capsys):
    root = _root_with_amoeba()
    args = root.parser.parse_args(["amoeba", "methods", "--json"])
    with pytest.raises(SystemExit) as exit_:
        args.func(args).run()
    assert exit_.value.code in (0, None)
    assert '"uniform-magnitude"' in capsys.readouterr().out


def test_argparse_forwards_help_and_errors(capsys):
    root = _root_with_amoeba()
    args = root.parser.parse_args(["amoeba", "prune", "--help"])
    with pytest.raises(SystemExit):
        args.func(args).run()
    out = capsys.readouterr().out
    assert "optimum-cli amoeba prune" in out and "--budget" in out
    args = root.parser.parse_args(["amoeba", "prune", "some-model", "--budget", "1.5"])
    with pytest.raises(SystemExit) as exit_:
        args.func(args).run()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "Fix:" in err[-1]


@pytest.mark.slow
def test_optimum_cli_subprocess():
    exe = shutil.which("optimum-cli") or (pathlib.Path(sys.executable).parent / "optimum-cli")
    if not pathlib.Path(exe).exists():
        pytest.skip("optimum-cli is not installed")
    env = dict(os.environ)
    # the repository root first, so its optimum/commands/register joins the namespace even before a reinstall
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    help_ = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert help_.returncode == 0 and "amoeba" in help_.stdout, help_.stdout + help_.stderr
    result = subprocess.run([str(exe), "amoeba", "plugins"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "amoeba_plugin.builtin.methods" in result.stdout
