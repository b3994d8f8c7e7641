"""``amoeba``: prune, inspect, evaluate and export Hugging Face causal LMs.

The group, its error handling and the loading of plugin commands; the commands live in modules
named for them (:mod:`.info`: plugins, methods, inspect, tasks; :mod:`.prune`: prune, export;
:mod:`.evaluate`: eval; :mod:`.recover`; :mod:`.fetch`) and plugins build theirs with
:mod:`.options`. A thin layer
over :mod:`amoeba_plugin.api`. A user error (:class:`~amoeba_plugin.errors.AmoebaError`)
prints one line, ``error: <problem>. Fix: <fix>``, and exits with status 2; ``--debug`` or
``AMOEBA_DEBUG=1`` shows the traceback instead. Plugins add commands through ``amoeba_register_commands``.

Start-up stays quick (``amoeba --help`` well under a second) because nothing here imports torch or
transformers: the command modules import them inside the command functions, loading the plugins
imports only their entry-point modules (registries fill on first use), and plugin commands are
:func:`~amoeba_plugin.cli.options.lazy_command` s. A new built-in command is one module plus one entry
in :data:`COMMANDS`; one whose module must import something heavy at top level goes in as
``cli.add_command(lazy_command(NAME, "amoeba_plugin.cli.MODULE:ATTR", help=...))`` instead.
``tests/test_cli.py::test_help_imports_no_torch`` keeps it so.
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

import click

from ..errors import AmoebaError
from .common import count as _count  # noqa: F401  (the helpers' old names, kept importable from here)
from .common import load as _load  # noqa: F401
from .common import parameter_lines as _parameter_lines  # noqa: F401
from .common import status as _status  # noqa: F401
from .evaluate import eval_
from .fetch import fetch
from .info import inspect, methods, plugins, tasks
from .options import parse_options  # noqa: F401  (public here before amoeba_plugin.cli.options existed)
from .options import table as _table  # noqa: F401
from .prune import export, prune
from .recover import recover

ENV_DEBUG = "AMOEBA_DEBUG"
EXIT_USER_ERROR = 2


class AmoebaCLIError(click.ClickException):
    """An :class:`AmoebaError` on its way out: one line on stderr, exit status 2."""

    exit_code = EXIT_USER_ERROR

    def show(self, file=None) -> None:
        click.echo(f"error: {' '.join(self.format_message().split())}", file=file or sys.stderr, err=True)


def _debug(ctx: click.Context | None) -> bool:
    if os.environ.get(ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


@contextmanager
def _short_warnings():
    """Show the host's own warnings (``amoeba: ...``) as one ``warning:`` line, others unchanged."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith("amoeba:"):
            click.echo(f"warning: {text[len('amoeba:'):].strip()}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


class AmoebaGroup(click.Group):
    """A group that turns AmoebaError into a one-line message and loads plugin commands lazily."""

    #: the plugin manager seen last, and the plugins whose commands were added from it
    _pm = None
    _done: set = set()

    def _load_plugin_commands(self) -> None:
        from ..plugins import get_plugin_manager

        pm = get_plugin_manager()
        if pm is not self._pm:  # first call, or the host was reset: start over
            self._pm, self._done = pm, set()
        builtins = {name: cmd for name, cmd in self.commands.items() if name in _BUILTIN_COMMANDS}
        from ..plugins import note_commands, note_failure, warn_once

        for impl in reversed(pm.hook.amoeba_register_commands.get_hookimpls()):
            if impl.plugin_name in self._done:
                continue
            self._done.add(impl.plugin_name)
            before = dict(self.commands)
            try:
                impl.function(cli=self)
            except Exception as exc:
                self.commands = before
                message = f"{type(exc).__name__}: {exc}"
                note_failure(impl.plugin_name, "amoeba_register_commands", message,
                             warning=f"amoeba: plugin '{impl.plugin_name}' failed in amoeba_register_commands and "
                                     f"its commands were skipped: {message}")
                continue
            for name, command in builtins.items():
                if self.commands.get(name) is not command:
                    self.commands[name] = command
                    warn_once(impl.plugin_name, f"amoeba: plugin '{impl.plugin_name}' tried to replace the "
                                                f"built-in command '{name}'; the built-in was kept")
            note_commands(impl.plugin_name, [n for n, c in self.commands.items() if before.get(n) is not c])

    def _safe_load(self) -> None:
        try:
            with _short_warnings():
                self._load_plugin_commands()
        except AmoebaError:
            raise
        except Exception as exc:  # the plugin host itself failed: built-in commands still work
            warnings.warn(f"amoeba: plugin commands could not be loaded: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)

    def list_commands(self, ctx):
        self._safe_load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        if name not in self.commands:
            self._safe_load()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        from ..progress import set_quiet

        with _short_warnings():
            try:
                return super().invoke(ctx)
            except AmoebaError as exc:
                if _debug(ctx):
                    raise
                raise AmoebaCLIError(str(exc)) from exc
            finally:
                set_quiet(False)  # -q lasts one command (the CLI may run in process: tests, notebooks)


# ---------------------------------------------------------------------- the group
@click.group(cls=AmoebaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amoeba-plugin", prog_name="amoeba")
@click.option("--debug", is_flag=True, help=f"Show tracebacks for user errors (or set {ENV_DEBUG}=1).")
@click.option("-q", "--quiet", is_flag=True, help="No status lines.")
def cli(debug: bool, quiet: bool):
    """amoeba: structured pruning of Hugging Face causal LMs, with methods as plugins.

    MODEL arguments take a Hugging Face hub name, a local directory, or amoeba-tiny-sotu (the
    embedded demo model).
    """
    from ..progress import set_quiet, silence_library_bars

    set_quiet(quiet)  # -q: no status lines and no bars
    silence_library_bars()  # one progress style: ours; transformers' bars would overwrite it


#: the built-in commands, in ``amoeba --help`` order of definition (click sorts them by name)
COMMANDS = (plugins, methods, inspect, prune, recover, eval_, tasks, export, fetch)
for _command in COMMANDS:
    cli.add_command(_command)
tasks_ = tasks  # the name the command had here before the split


_BUILTIN_COMMANDS = frozenset(cli.commands)


def main(argv: list[str] | None = None, prog_name: str = "amoeba") -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name=prog_name)
    except AmoebaError as exc:  # raised outside a command (e.g. while listing plugin commands)
        if _debug(None) or "--debug" in (argv if argv is not None else sys.argv[1:]):
            raise
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
