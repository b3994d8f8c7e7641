"""The CLI kit for plugins: click flags from an options dataclass, the shared calibration /
evaluation / export flags, ``--option KEY=VALUE`` parsing and one table printer. The ``amoeba``
commands use it, and so does every backend's command group, so each default is stated once (in the
dataclass, or in :class:`~amoeba_plugin.api.PruningConfig` for the run settings)::

    import click
    from amoeba_plugin.cli.options import calibration_options, export_options, option_flags

    @click.command()
    @click.argument("model")
    @option_flags(MyOptions, into="options")      # --steps, --batch-size, ... with help and defaults
    @calibration_options()                         # --calibration, --calibration-samples, ...
    @export_options()                              # --output/-o, --exporter, --overwrite
    def run(model, options, calibration, calibration_samples, calibration_seq_len, seed, output, exporter,
            overwrite): ...

Flag names are the field names with dashes (``batch_size`` -> ``--batch-size``); the parameters
the command receives are the field names, so ``PruningConfig(**pruning_settings(params))`` works.
Old flag names stay as hidden aliases (``--samples``, ``--eval-source``, ...), so scripts keep working.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import click

from ..errors import AmoebaError
from ..options import field_default, field_types, optional_inner

__all__ = [
    "AliasedOption",
    "calibration_options",
    "echo_table",
    "evaluation_options",
    "export_options",
    "flag",
    "LazyCommand",
    "lazy_command",
    "option_flags",
    "option_pairs",
    "parse_options",
    "pruning_defaults",
    "pruning_settings",
    "table",
]


# ---------------------------------------------------------------------- commands imported when they run
class LazyCommand(click.Command):
    """A command known by name and one-line help, whose module is imported only when it runs or shows
    its own help, so ``amoeba --help`` lists it without importing torch. Works in any click group:
    click builds the subcommand's context through :meth:`make_context`, which hands over to the real
    command (a command or a group)."""

    def __init__(self, name: str, target: str, help: str, hidden: bool = False):
        super().__init__(name, help=help, short_help=help, hidden=hidden, add_help_option=False)
        self.target = target
        self._real: click.Command | None = None

    def load(self) -> click.Command:
        """The real click command: ``target`` is ``"package.module:attribute"``."""
        if self._real is None:
            import importlib

            module, _, attribute = self.target.partition(":")
            real = getattr(importlib.import_module(module), attribute)
            if not isinstance(real, click.Command):
                raise TypeError(f"{self.target} is a {type(real).__name__}, not a click command")
            self._real = real
        return self._real

    def make_context(self, info_name, args, parent=None, **extra):
        return self.load().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        return self.load().invoke(ctx)

    def get_help(self, ctx):
        return self.load().get_help(ctx)

    def get_params(self, ctx):
        return self.load().get_params(ctx)

    def main(self, *args, **kwargs):
        return self.load().main(*args, **kwargs)


def lazy_command(name: str, target: str, help: str, *, hidden: bool = False) -> LazyCommand:
    """A command for ``amoeba_register_commands`` that imports ``target`` (``"pkg.cli:group"``) only
    when the user runs it: ``cli.add_command(lazy_command("searchllm", "amoeba_searchllm.cli:searchllm",
    help="Search for Efficient LLMs ..."))``. ``help`` is the line ``amoeba --help`` shows."""
    return LazyCommand(name, target, help, hidden=hidden)


# ---------------------------------------------------------------------- flags with hidden aliases
class AliasedOption(click.Option):
    """A click option whose extra names (old flags kept so scripts keep working) are accepted but left
    out of ``--help``."""

    def __init__(self, *args, hidden_aliases: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx):
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [o for o in opts if o not in self.hidden_aliases]
        self.secondary_opts = [o for o in secondary if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary


def flag(*decls: str, aliases: Iterable[str] = (), **kwargs):
    """``click.option(*decls, **kwargs)`` that also accepts ``aliases`` (hidden from ``--help``)."""
    aliases = tuple(aliases)
    return click.option(*decls, *aliases, cls=AliasedOption, hidden_aliases=aliases, **kwargs)


def _help(text: str) -> str:
    text = (text or "").strip()
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")


# ---------------------------------------------------------------------- flags from a dataclass
def _field_flag(f: dataclasses.Field, tp, default, aliases: tuple[str, ...], decls: tuple[str, ...] | None):
    name = "--" + f.name.replace("_", "-")
    inner = optional_inner(tp)
    choices = f.metadata.get("choices")
    kwargs: dict[str, Any] = {"help": _help(f.metadata.get("help", ""))}
    if inner is bool:
        decls = decls or (f"{name}/--no-{f.name.replace('_', '-')}",)
        return flag(*decls, f.name, aliases=aliases, default=bool(default), show_default=True, **kwargs)
    origin = getattr(inner, "__origin__", None) or (inner if inner in (list, tuple, set) else None)
    item = (getattr(inner, "__args__", ()) or (str,))[0]
    if origin in (list, tuple, set) and item is str:  # texts (which may hold commas): a repeatable flag
        kwargs.update(multiple=True, type=_scalar_type(item, choices),
                      default=tuple(default) if default is not None else None,
                      show_default=bool(default))
        kwargs["help"] = (kwargs["help"] + " Repeatable.").strip()
    elif origin in (list, tuple, set):  # numbers: one comma-separated string, read by the dataclass
        kwargs.update(type=click.STRING, metavar="A,B,...",
                      default=",".join(_text(v) for v in default) if default is not None else None,
                      show_default=default is not None)
    elif origin is dict or inner is dict:
        kwargs.update(type=click.STRING, metavar="JSON", default=json.dumps(default) if default else None,
                      show_default=bool(default))
    else:
        kwargs.update(type=_scalar_type(inner, choices), default=default, show_default=default is not None)
    return flag(*(decls or (name,)), f.name, aliases=aliases, **kwargs)


def _scalar_type(tp, choices):
    if choices:
        return click.Choice([str(c) for c in choices])
    return {int: click.INT, float: click.FLOAT}.get(tp, click.STRING)


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _selected(cls, include, exclude) -> list[dataclasses.Field]:
    chosen = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in chosen}
    for name in (*(include or ()), *exclude):
        if name not in names:
            raise ValueError(f"{cls.__name__} has no option {name!r}")
    if include is not None:
        order = {name: i for i, name in enumerate(include)}
        chosen = sorted((f for f in chosen if f.name in order), key=lambda f: order[f.name])
    return [f for f in chosen if f.name not in set(exclude)]


def option_flags(cls: type, *, include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                 defaults: Mapping[str, Any] | None = None, aliases: Mapping[str, Iterable[str]] | None = None,
                 decls: Mapping[str, Iterable[str]] | None = None, into: str | None = None, build: bool = False):
    """A decorator adding one click flag per field of the options dataclass ``cls``.

    Each flag takes its help, default, type and choices from the field: ``--batch-size`` for
    ``batch_size``, ``--name/--no-name`` for a bool, a repeatable flag for a list of texts, one
    comma-separated string for a list of numbers (``--widths 1,0.75``), JSON for a dict. ``include``/``exclude`` pick fields; ``defaults`` restates
    a default on purpose (a command whose default differs from the dataclass'); ``aliases`` adds
    hidden old names; ``decls`` replaces a field's flag names (e.g. ``("--dynamic/--constant",)``).

    Without ``into`` the command receives one parameter per field. With ``into="options"`` it receives
    one parameter ``options``: a dict of the flags' values (None left out), or with ``build=True`` the
    ``cls`` instance built from them (a bad value is the usual one-line error)."""
    exclude = tuple(exclude)
    chosen = _selected(cls, include, exclude)
    types = field_types(cls)
    defaults = dict(defaults or {})
    unknown = set(defaults) - {f.name for f in chosen}
    if unknown:
        raise ValueError(f"defaults for options that get no flag: {', '.join(sorted(unknown))}")
    decorators = []
    for f in chosen:
        default = defaults[f.name] if f.name in defaults else field_default(f)
        decorators.append(_field_flag(f, types.get(f.name, Any), default, tuple((aliases or {}).get(f.name, ())),
                                      tuple((decls or {}).get(f.name, ())) or None))
    names = [f.name for f in chosen]
    multiple_none = {f.name for f in chosen if field_default(f) is None and f.name not in defaults}

    def decorate(func):
        target = func
        if into is not None:
            @functools.wraps(func)
            def target(*args, **kwargs):
                values = {}
                for name in names:
                    value = kwargs.pop(name)
                    if isinstance(value, tuple):
                        value = list(value) if value or name not in multiple_none else None
                    if value is not None:
                        values[name] = value
                kwargs[into] = cls(**values) if build else values
                return func(*args, **kwargs)
        for decorator in reversed(decorators):
            target = decorator(target)
        return target

    return decorate


# ---------------------------------------------------------------------- the run settings
def pruning_defaults() -> dict:
    """The defaults of :class:`~amoeba_plugin.api.PruningConfig`, by field name (stated there once)."""
    from ..api import PruningConfig

    return {f.name: field_default(f) for f in dataclasses.fields(PruningConfig)}


def pruning_settings(params: Mapping[str, Any]) -> dict:
    """The entries of ``params`` (a command's parameters) that are :class:`PruningConfig` fields."""
    from ..api import PruningConfig

    names = {f.name for f in dataclasses.fields(PruningConfig)}
    return {k: v for k, v in params.items() if k in names}


def _stack(decorators):
    def decorate(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return decorate


_CALIBRATION_ALIASES = {"calibration_samples": ("--samples",), "calibration_seq_len": ("--seq-len",)}


def calibration_options(*, aliases: Mapping[str, Iterable[str]] | None = None, seed: bool = True, **defaults):
    """``--calibration``, ``--calibration-samples``, ``--calibration-seq-len`` (old names ``--samples``,
    ``--seq-len`` kept as hidden aliases) and ``--seed``; parameters named as in ``PruningConfig``.
    Defaults come from ``PruningConfig``; pass e.g. ``calibration_samples=136`` to restate one."""
    base = {**pruning_defaults(), **defaults}
    aliases = _CALIBRATION_ALIASES if aliases is None else aliases
    found = [
        flag("--calibration", "calibration", default=base["calibration"], show_default=True,
             help="Calibration text: NAME[:SPLIT] (e.g. sotu:train), file:PATH, hf:DATASET[:SPLIT], ... or none."),
        flag("--calibration-samples", "calibration_samples", aliases=aliases.get("calibration_samples", ()), type=int,
             default=base["calibration_samples"], show_default=True, help="Calibration windows."),
        flag("--calibration-seq-len", "calibration_seq_len", aliases=aliases.get("calibration_seq_len", ()), type=int,
             default=base["calibration_seq_len"], show_default=True, help="Calibration window length (tokens)."),
    ]
    if seed:
        found.append(flag("--seed", "seed", type=int, default=base["seed"], show_default=True,
                          help="Seed of the calibration windows and the method."))
    return _stack(found)


_EVALUATION_ALIASES = {"evaluation": ("--eval-source",), "evaluation_windows": ("--eval-windows",)}


def evaluation_options(*, toggle: bool = True, overlap: bool = True, aliases: Mapping[str, Iterable[str]] | None = None,
                       **defaults):
    """``--evaluation`` (held-out text), ``--evaluation-windows``, ``--evaluation-seq-len``,
    ``--allow-eval-on-calibration`` (parameter ``allow_calibration_overlap``) and, with ``toggle``,
    ``--eval/--no-eval`` (parameter ``evaluate``). Old names (``--eval-source``, ``--eval-windows``)
    are hidden aliases; pass ``aliases`` to change them. Defaults come from ``PruningConfig``."""
    base = {**pruning_defaults(), **defaults}
    aliases = _EVALUATION_ALIASES if aliases is None else aliases
    found = []
    if toggle:
        found.append(flag("--eval/--no-eval", "evaluate", default=True, show_default=True,
                          help="Perplexity before and after, on --evaluation."))
    found += [
        flag("--evaluation", "evaluation", aliases=aliases.get("evaluation", ()), default=base["evaluation"],
             show_default=True, help="Held-out text for perplexity: NAME[:SPLIT], file:PATH, ..."),
        flag("--evaluation-windows", "evaluation_windows", aliases=aliases.get("evaluation_windows", ()), type=int,
             default=base["evaluation_windows"], show_default=True, help="At most this many perplexity windows."),
        flag("--evaluation-seq-len", "evaluation_seq_len", aliases=aliases.get("evaluation_seq_len", ()), type=int,
             default=base["evaluation_seq_len"], show_default=True, help="Perplexity window length (tokens)."),
    ]
    if overlap:
        found.append(flag("--allow-eval-on-calibration", "allow_calibration_overlap",
                          aliases=aliases.get("allow_calibration_overlap", ()), is_flag=True,
                          help="Evaluate even on the calibration text (normally refused: the pruning saw it)."))
    return _stack(found)


def export_options(*, required: bool = False, exporter: bool = True, help: str | None = None):
    """``--output/-o`` (written atomically), ``--exporter`` (default from ``PruningConfig``) and
    ``--overwrite``."""
    found = [flag("--output", "-o", "output", type=click.Path(file_okay=False), required=required, default=None,
                  help=help or ("Export directory (written atomically)." if required else
                                "Export directory (written atomically). Without it nothing is written."))]
    if exporter:
        found.append(flag("--exporter", "exporter", default=pruning_defaults()["exporter"], show_default=True,
                          help="How to write the result: auto, hf (stock shapes only), amoeba, ... "
                               "(see `amoeba plugins`)."))
        found.append(flag("--dtype", "export_dtype", default=None,
                          type=click.Choice(["float32", "float16", "bfloat16"]),
                          help="dtype of the exported weights [default: the source model's]."))
    found.append(flag("--overwrite", "overwrite", is_flag=True, help="Replace a non-empty output directory."))
    return _stack(found)


def option_pairs(help: str = "Method option (repeatable); values are read as JSON when they parse."):
    """``--option KEY=VALUE`` (repeatable), parameter ``options``; read it with :func:`parse_options`."""
    return flag("--option", "options", multiple=True, metavar="KEY=VALUE", help=help)


def parse_options(pairs: Iterable[str]) -> dict:
    """``--option KEY=VALUE`` pairs as a dict (values read as JSON when they parse, else kept as text;
    the method's options dataclass then coerces them to its field types)."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AmoebaError(f"option '{pair}' is not key=value", "write options as --option name=value")
        value = value.strip()
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


# ---------------------------------------------------------------------- output
def table(rows: Iterable[Iterable[Any]], header: list[str]) -> str:
    """Rows under a header, columns padded; None shows as ``-``."""
    rows = [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def echo_table(rows: Iterable[Iterable[Any]], header: list[str]) -> None:
    """Print :func:`table`."""
    click.echo(table(rows, header))
