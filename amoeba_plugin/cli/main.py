"""``amoeba``: prune, inspect, evaluate and export Hugging Face causal LMs.

A thin layer over :mod:`amoeba_plugin.api`. A user error (:class:`~amoeba_plugin.errors.AmoebaError`)
prints one line, ``error: <problem>. Fix: <fix>``, and exits with status 2; ``--debug`` or
``AMOEBA_DEBUG=1`` shows the traceback instead. torch and transformers are imported inside the
commands, so ``amoeba --help`` stays quick. Plugins add commands through ``amoeba_register_commands``.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager

import click

from ..errors import AmoebaError

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
        for impl in reversed(pm.hook.amoeba_register_commands.get_hookimpls()):
            if impl.plugin_name in self._done:
                continue
            self._done.add(impl.plugin_name)
            before = dict(self.commands)
            try:
                impl.function(cli=self)
            except Exception as exc:
                self.commands = before
                warnings.warn(f"amoeba: plugin '{impl.plugin_name}' failed in amoeba_register_commands and its "
                              f"commands were skipped: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
                continue
            for name, command in builtins.items():
                if self.commands.get(name) is not command:
                    self.commands[name] = command
                    warnings.warn(f"amoeba: plugin '{impl.plugin_name}' tried to replace the built-in command "
                                  f"'{name}'; the built-in was kept", RuntimeWarning, stacklevel=2)

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
        with _short_warnings():
            try:
                return super().invoke(ctx)
            except AmoebaError as exc:
                if _debug(ctx):
                    raise
                raise AmoebaCLIError(str(exc)) from exc


# ---------------------------------------------------------------------- helpers
def _status(message: str):
    from ..progress import status

    quiet = bool(click.get_current_context().find_root().params.get("quiet"))
    return status(message, enabled=not quiet)


def _load(name: str):
    from ..models import load_model

    with _status(f"loading {name}"):
        return load_model(name)


def _table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _count(n: float) -> str:
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def parse_options(pairs: tuple[str, ...]) -> dict:
    """``--option KEY=VALUE`` pairs as a dict (values read as JSON when they parse); public so that a
    plugin's own commands take method options the way ``amoeba prune`` does."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AmoebaError(f"option '{pair}' is not key=value", "write options as --option name=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _parameter_lines(anatomy, plan=None) -> list[str]:
    from ..plan import Plan

    full = Plan.full(anatomy)
    p_all, p_ne = full.num_parameters(anatomy), full.num_parameters(anatomy, embeddings=False)
    if plan is None:
        return [f"parameters: {p_all:,} ({_count(p_all)}); non-embedding: {p_ne:,} ({_count(p_ne)})"]
    a_all, a_ne = plan.num_parameters(anatomy), plan.num_parameters(anatomy, embeddings=False)
    return [f"parameters:     {p_all:,} -> {a_all:,} (ratio {a_all / p_all:.4f})",
            f"non-embedding:  {p_ne:,} -> {a_ne:,} (ratio {a_ne / max(p_ne, 1):.4f})"]


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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool):
    """List loaded plugins and what each registered."""
    from dataclasses import asdict

    from ..plugins import plugin_records

    records = plugin_records()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=1))
        return
    rows = []
    for r in records:
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(r.registered.items())) or "-"
        rows.append([r.name, r.version or "-", f"{r.origin} ({r.distribution or '?'})", r.status, what])
    click.echo(_table(rows, ["plugin", "version", "origin", "status", "registered"]))
    for r in records:
        if r.error:
            click.echo(f"! {r.name}: {r.error}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods(as_json: bool):
    """List pruning methods, their owner plugin, capabilities and budget kinds."""
    from ..plugins import owner, registry

    items = registry("methods")
    data = [{"name": name, "plugin": owner("methods", name), "capabilities": sorted(m.capabilities),
             "budget_kinds": list(m.budget_kinds), "description": m.description,
             "options": dict(getattr(m, "default_options", {}) or {})} for name, m in sorted(items.items())]
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    rows = [[d["name"], d["plugin"], ",".join(d["capabilities"]) or "-", ",".join(d["budget_kinds"]),
             d["description"]] for d in data]
    click.echo(_table(rows, ["method", "plugin", "capabilities", "budgets", "description"]))


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model: str, as_json: bool):
    """Show the prunable structure of MODEL and its parameter counts."""
    from ..anatomy import anatomy_of
    from ..plan import Plan

    loaded, _ = _load(model)
    anatomy = anatomy_of(loaded)
    full = Plan.full(anatomy)
    info = anatomy.describe()
    info.update(parameters=full.num_parameters(anatomy),
                non_embedding_parameters=full.num_parameters(anatomy, embeddings=False),
                macs_per_token=full.macs_per_token(anatomy))
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"model: {model}")
    for key, value in info.items():
        if key == "per_layer":
            click.echo("per_layer:")
            for i, layer in enumerate(value):
                click.echo(f"  {i}: " + ", ".join(f"{k}={v}" for k, v in layer.items()))
        elif key not in ("parameters", "non_embedding_parameters", "macs_per_token"):
            click.echo(f"{key}: {value}")
    for line in _parameter_lines(anatomy):
        click.echo(line)
    click.echo(f"macs_per_token: {info['macs_per_token']:,}")


@cli.command()
@click.argument("model")
@click.option("--method", "-m", default="uniform-magnitude", show_default=True, help="See `amoeba methods`.")
@click.option("--budget", "-b", default="0.5", show_default=True,
              help="Fraction to keep: 0.5, nonembed=0.6, macs=0.5, count=3e6, shape=layers:6,heads:4.")
@click.option("--calibration", default="sotu:train", show_default=True, help="Calibration text source, or none.")
@click.option("--samples", default=32, show_default=True, type=int, help="Calibration windows.")
@click.option("--seq-len", default=256, show_default=True, type=int, help="Calibration window length (tokens).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Export directory (written atomically). Without it nothing is written.")
@click.option("--exporter", default="auto", show_default=True, help="See `amoeba plugins`.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True,
              help="Perplexity before and after on --eval-source.")
@click.option("--eval-source", default="sotu:validation", show_default=True)
@click.option("--eval-windows", default=32, show_default=True, type=int)
@click.option("--allow-eval-on-calibration", "allow_overlap", is_flag=True,
              help="Let --eval-source be the calibration text (normally refused).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Method option (repeatable); values are parsed as JSON when possible.")
@click.option("--config", "config_path", type=click.Path(dir_okay=True), default=None,
              help="Read settings from a pruning_config.json (flags given explicitly still win).")
def prune(model, method, budget, calibration, samples, seq_len, seed, output, exporter, overwrite, evaluate,
          eval_source, eval_windows, allow_overlap, options, config_path):
    """Prune MODEL to a budget and (with --output) export the result."""
    from ..api import AmoebaPruner, PruningConfig, preflight

    ctx = click.get_current_context()
    settings = dict(method=method, budget=budget, calibration=calibration, calibration_samples=samples,
                    calibration_seq_len=seq_len, seed=seed, exporter=exporter, evaluation=eval_source,
                    evaluation_windows=eval_windows, method_options=parse_options(options),
                    allow_calibration_overlap=allow_overlap)
    if config_path:
        from click.core import ParameterSource

        base = PruningConfig.from_pretrained(config_path).to_dict()
        flag_of = {"calibration_samples": "samples", "calibration_seq_len": "seq_len",
                   "evaluation": "eval_source", "evaluation_windows": "eval_windows", "method_options": "options",
                   "allow_calibration_overlap": "allow_overlap"}
        for key in list(settings):
            if ctx.get_parameter_source(flag_of.get(key, key)) == ParameterSource.DEFAULT:
                settings[key] = base[key]
    config = PruningConfig(**settings)  # validates the budget and the numbers
    preflight(config, output, overwrite, evaluate)  # method, sources, exporter, output dir: before loading

    loaded, tokenizer = _load(model)
    pruner = AmoebaPruner.from_pretrained(loaded, tokenizer=tokenizer)
    pruner.name = model
    with _status(f"pruning with {config.method} to {config.budget_spec}"
                 + (" and exporting" if output else "") + (" (with evaluation)" if evaluate else "")):
        out = pruner.prune(config, save_directory=output, overwrite=overwrite, evaluate=evaluate)
    for line in _parameter_lines(pruner.anatomy, out.plan):
        click.echo(line)
    shape = out.summary.get("shape") or []
    if shape and out.summary.get("uniform"):
        s = shape[0]
        click.echo(f"shape:          {len(shape)} layers, {s['query_heads']} query heads, {s['kv_groups']} KV groups, "
                   f"head_dim {s['head_dim']}, intermediate {s['intermediate_size']}")
    elif shape:
        click.echo(f"shape:          {len(shape)} layers, per-layer shapes differ (see plan.json)")
    if out.perplexity_before is not None:
        click.echo(f"perplexity ({config.evaluation}): {out.perplexity_before:.3f} -> {out.perplexity_after:.3f}")
    if out.export_path is not None:
        click.echo(f"export written to {out.export_path}")
    else:
        click.echo("no --output given: nothing was written")


@cli.command(name="eval")
@click.argument("model")
@click.option("--plan", "plan_path", type=click.Path(), default=None,
              help="Also evaluate MODEL with this plan applied (softly, by masks).")
@click.option("--source", default="sotu:validation", show_default=True, help="Text source (perplexity).")
@click.option("--seq-len", default=256, show_default=True, type=int, help="Window length (perplexity).")
@click.option("--windows", default=32, show_default=True, type=int, help="At most this many windows (perplexity).")
@click.option("--tasks", "-t", default=None, metavar="T1,T2",
              help="Run these lm-eval tasks instead of the perplexity protocol (see `amoeba tasks`; needs lm-eval).")
@click.option("--limit", default=None, type=float, help="lm-eval: documents per task (a count, or a fraction < 1).")
@click.option("--num-fewshot", default=None, type=int, help="lm-eval: few-shot examples per prompt.")
@click.option("--batch-size", default="16", show_default=True, help="lm-eval: batch size (an int or auto).")
@click.option("--seed", default=None, type=int, help="lm-eval: one seed for python/numpy/torch/few-shot sampling.")
@click.option("--include-path", "include_path", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="lm-eval: another folder of task YAMLs (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="lm-eval: print the results as JSON.")
@click.option("--allow-eval-on-calibration", is_flag=True,
              help="Evaluate even on the text the model or plan was calibrated on (normally refused).")
def eval_(model, plan_path, source, seq_len, windows, tasks, limit, num_fewshot, batch_size, seed, include_path,
          as_json, allow_eval_on_calibration):
    """Perplexity of MODEL (and of MODEL with --plan applied), or lm-eval --tasks.

    Without --tasks: the papers' perplexity protocol on --source. With --tasks: lm-evaluation-harness
    in process, one row per task and metric, e.g. `amoeba eval amoeba-tiny-sotu --tasks
    amoeba_sotu_ppl,amoeba_sotu_cloze --limit 20`.
    """
    if tasks is not None:
        return _eval_tasks(model, plan_path, tasks, limit, num_fewshot, batch_size, seed, include_path, as_json)
    from ..data import check_disjoint, resolve_source

    resolve_source(source)
    plan = None
    if plan_path:
        from ..plan import Plan

        plan = Plan.load(plan_path)
    from ..pipeline import calibration_texts

    for calibrated in calibration_texts(plan=plan, export=model):
        check_disjoint(calibrated, source, allow_eval_on_calibration)
    loaded, tokenizer = _load(model)
    if tokenizer is None:
        raise AmoebaError(f"{model} has no tokenizer", "save a tokenizer next to the model")
    from ..anatomy import anatomy_of
    from ..eval import perplexity

    anatomy = anatomy_of(loaded)
    if plan is not None:
        plan.validate(anatomy)
    before = perplexity(loaded, tokenizer, source=source, seq_len=seq_len, max_windows=windows)
    click.echo(f"perplexity ({source}): {before:.3f}")
    if plan is not None:
        from ..surgery import apply_soft

        with apply_soft(loaded, anatomy, plan):
            after = perplexity(loaded, tokenizer, source=source, seq_len=seq_len, max_windows=windows)
        click.echo(f"with plan:   {after:.3f}")
        for line in _parameter_lines(anatomy, plan):
            click.echo(line)


def _eval_tasks(model, plan_path, tasks, limit, num_fewshot, batch_size, seed, include_path, as_json):
    """``amoeba eval --tasks``: the ``lm-eval`` evaluator in process."""
    from ..eval.lm_eval import format_rows, parse_tasks, task_manager
    from ..plugins import get

    names = parse_tasks(tasks)
    if not names:
        raise AmoebaError("--tasks names no task", "pass e.g. --tasks amoeba_sotu_ppl,amoeba_sotu_cloze")
    if limit is not None and limit >= 1:
        if limit != int(limit):
            raise AmoebaError(f"--limit {limit} is neither a count nor a fraction below 1", "pass e.g. --limit 20")
        limit = int(limit)
    batch = batch_size if str(batch_size).startswith("auto") else _positive_int(batch_size, "--batch-size")
    evaluator = get("evaluators", "lm-eval")
    with _status("indexing lm-eval tasks"):
        task_manager(names, list(include_path))  # unknown names fail here, before the model loads
    plan = None
    if plan_path:
        from ..plan import Plan

        plan = Plan.load(plan_path)
    loaded, tokenizer = _load(model)
    if tokenizer is None:
        raise AmoebaError(f"{model} has no tokenizer", "save a tokenizer next to the model")
    options = {"tasks": names, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch, "seed": seed,
               "include_path": list(include_path)}
    with _status(f"lm-eval {', '.join(names)}"):
        result = evaluator.evaluate(loaded, tokenizer, **options)
    after = None
    if plan is not None:
        from ..anatomy import anatomy_of
        from ..surgery import apply_soft

        anatomy = anatomy_of(loaded)
        plan.validate(anatomy)
        with apply_soft(loaded, anatomy, plan), _status(f"lm-eval {', '.join(names)} with the plan"):
            after = evaluator.evaluate(loaded, tokenizer, **options)
    if as_json:
        keep = ("results", "groups", "stderr", "tasks", "config", "n_samples", "versions")
        data = {k: result[k] for k in keep}
        if after is not None:
            data["with_plan"] = {k: after[k] for k in keep}
        click.echo(json.dumps(data, indent=1, default=str))
        return
    rows = format_rows(result["rows"])
    if after is None:
        click.echo(_table(rows, ["task", "metric", "value", "stderr"]))
    else:
        planned = {(r[0], r[1]): r[2] for r in format_rows(after["rows"])}
        click.echo(_table([[r[0], r[1], r[2], planned.get((r[0], r[1]), "-")] for r in rows],
                          ["task", "metric", "model", "with plan"]))
        for line in _parameter_lines(anatomy, plan):
            click.echo(line)
    shown = {t: n.get("effective") for t, n in result["n_samples"].items()}
    if shown:
        click.echo("documents: " + ", ".join(f"{t} {n}" for t, n in shown.items()))


def _positive_int(value, flag: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise AmoebaError(f"{flag} {value} is not a positive integer", f"pass e.g. {flag} 16 (or auto)")
    return number


@cli.command(name="tasks")
@click.option("--path", "show_path", is_flag=True, help="Print only the folder, for lm-eval's --include_path.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks_(show_path: bool, as_json: bool):
    """List the packaged lm-eval tasks (built from the shipped corpora; no download).

    Run them in process with `amoeba eval MODEL --tasks NAME[,NAME]`, or with lm-eval's own CLI:
    `amoeba-lm-eval run --model amoeba --model_args pretrained=MODEL --tasks NAME` (plain `lm_eval`
    needs `--include_path "$(amoeba tasks --path)"`).
    """
    from ..eval.lm_eval import packaged_tasks, tasks_dir

    if show_path:
        click.echo(tasks_dir())
        return
    found = packaged_tasks()
    if as_json:
        click.echo(json.dumps({"path": tasks_dir(), "tasks": found}, indent=1))
        return
    rows = []
    for name, info in found.items():
        if info["kind"] == "group":
            rows.append([name, "group", "of " + ", ".join(info["tasks"]), info["description"]])
        else:
            rows.append([name, info["output_type"], ", ".join(info["metrics"]), info["description"]])
    click.echo(_table(rows, ["task", "type", "metrics", "description"]))
    click.echo(f"folder: {tasks_dir()}")


@cli.command()
@click.argument("model")
@click.option("--plan", "plan_path", required=True, type=click.Path(), help="plan.json (or an export directory).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--exporter", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
def export(model, plan_path, output, exporter, overwrite):
    """Apply a plan to MODEL and export the result."""
    from ..export import check_destination
    from ..plan import Plan
    from ..plugins import get

    plan = Plan.load(plan_path)
    get("exporters", exporter)
    check_destination(output, overwrite)
    loaded, tokenizer = _load(model)
    from ..anatomy import anatomy_of
    from ..export import ExportRequest
    from ..export import export as run_export

    anatomy = anatomy_of(loaded)
    plan.validate(anatomy)
    request = ExportRequest(model=loaded, anatomy=anatomy, plan=plan, tokenizer=tokenizer,
                            info={"source_model": model, "plan": str(plan_path), **plan.provenance})
    with _status(f"exporting with '{exporter}'"):
        path = run_export(exporter, request, output, overwrite)
    for line in _parameter_lines(anatomy, plan):
        click.echo(line)
    click.echo(f"export written to {path}")


@cli.command()
@click.argument("name", type=click.Choice(["smollm2-135m"]))
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Cache directory.")
@click.option("--force", is_flag=True, help="Download and convert again.")
def fetch(name, cache, force):
    """Download a model into the cache (SmolLM2-135M, converted to safetensors)."""
    from ..smollm2 import fetch_smollm2

    with _status(f"fetching {name}"):
        path = fetch_smollm2(cache=cache, force=force)
    click.echo(str(path))


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
