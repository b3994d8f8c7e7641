"""``amoeba plugins``, ``amoeba methods [NAME]``, ``amoeba inspect MODEL`` and ``amoeba tasks``:
what is installed and what a model looks like."""
from __future__ import annotations

import json

import click

from .common import load, parameter_lines
from .options import echo_table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool):
    """List loaded plugins: what each registered, the commands it added, and its errors and warnings."""
    from dataclasses import asdict

    from ..plugins import plugin_records

    root = click.get_current_context().find_root().command
    if hasattr(root, "_safe_load"):
        root._safe_load()  # the plugin commands, so each record knows its commands
    records = plugin_records()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=1))
        return
    rows = []
    for r in records:
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(r.registered.items()))
        if r.commands:
            what = "; ".join(filter(None, [what, f"commands: {', '.join(r.commands)}"]))
        rows.append([r.name, r.version or "-", f"{r.origin} ({r.distribution or '?'})", r.status, what or "-"])
    echo_table(rows, ["plugin", "version", "origin", "status", "registered"])
    for r in records:
        if r.error:
            click.echo(f"! {r.name}: {r.error}")
        for warning in r.warnings:
            text = warning[len("amoeba:"):].strip() if warning.startswith("amoeba:") else warning
            if not r.error or text not in r.error:
                click.echo(f"warning: {r.name}: {text}")


def method_record(name: str, method) -> dict:
    """What ``amoeba methods --json`` says about one method: owner, capabilities, budget kinds,
    description and every option (type, default, help, choices, bounds)."""
    from ..options import describe_options
    from ..plugins import owner

    return {"name": name, "plugin": owner("methods", name), "capabilities": sorted(method.capabilities),
            "budget_kinds": list(method.budget_kinds), "description": method.description,
            "options": describe_options(method.options_class)}


_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods(name: str | None, as_json: bool):
    """List pruning methods (owner plugin, capabilities, budget kinds); with NAME, one method and its
    options: type, default and help of each (pass them as `amoeba prune --option KEY=VALUE`)."""
    from ..plugins import get, registry

    if name is not None:
        record = method_record(name, get("methods", name))
        if as_json:
            click.echo(json.dumps(record, indent=1))
            return
        click.echo(f"method: {record['name']} ({record['plugin']})")
        click.echo(record["description"])
        click.echo(f"capabilities: {', '.join(record['capabilities']) or '-'}")
        click.echo(f"budgets: {', '.join(record['budget_kinds'])}")
        if not record["options"]:
            click.echo("options: none")
            return
        click.echo("options:")
        rows = []
        for option, info in record["options"].items():
            default = json.dumps(info["default"]) if not isinstance(info["default"], str) else info["default"]
            extra = ", ".join(info.get("choices", [])) or " and ".join(
                f"{_SIGNS[k]} {v}" for k, v in info.get("bounds", {}).items())
            if info.get("registry"):
                extra = f"a name from `amoeba {info['registry']}`" if info["registry"] == "methods" else \
                    f"a registered {info['registry'][:-1]}"
            rows.append([option, info["type"], default, extra or "", info["help"]])
        echo_table(rows, ["option", "type", "default", "choices/bounds", "help"])
        for option, info in record["options"].items():
            if info.get("registry"):
                names = ", ".join(sorted(registry(info["registry"])))
                click.echo(f"{option}: the name of a registered {info['registry'][:-1]} (registered: {names}; "
                           f"the help above says which kinds this method accepts), e.g. "
                           f"`amoeba prune MODEL --method {name} --option {option}=NAME`")
        return
    data = [method_record(n, m) for n, m in sorted(registry("methods").items())]
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    rows = [[d["name"], d["plugin"], ",".join(d["capabilities"]) or "-", ",".join(d["budget_kinds"]),
             _metric_option(d), d["description"]] for d in data]
    echo_table(rows, ["method", "plugin", "capabilities", "budgets", "metric", "description"])
    click.echo("metric: the default of the method's metric option (change it with --option NAME=METRIC; "
               "`amoeba methods METHOD` names the option)")


def _metric_option(record: dict) -> str:
    """The default of a method's option that takes a registered metric, or ``-``."""
    found = [str(info["default"]) for info in record["options"].values() if info.get("registry") == "metrics"]
    return ", ".join(found) or "-"


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model: str, as_json: bool):
    """Show the prunable structure of MODEL and its parameter counts."""
    from ..anatomy import anatomy_of
    from ..plan import Plan

    loaded, _ = load(model)
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
    for line in parameter_lines(anatomy):
        click.echo(line)
    click.echo(f"macs_per_token: {info['macs_per_token']:,}")


@click.command(name="tasks")
@click.option("--path", "show_path", is_flag=True, help="Print only the folder, for lm-eval's --include_path.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks(show_path: bool, as_json: bool):
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
    echo_table(rows, ["task", "type", "metrics", "description"])
    click.echo(f"folder: {tasks_dir()}")


__all__ = ["inspect", "method_record", "methods", "plugins", "tasks"]
