"""The plugin manager: built-in plugins first, then every entry point of the ``amoeba_plugin`` group.

Each entry point is loaded on its own, so one that fails to import is reported by name and skipped
while the rest keep working (pluggy's ``load_setuptools_entrypoints`` stops at the first failure).
Environment variables, as in pytest/tox/llm:

* ``AMOEBA_BLOCK_PLUGINS=a,b``: never load the named plugins (built-ins included).
* ``AMOEBA_LOAD_PLUGINS=a,b``: load only these external plugins (empty string: none).

Lifecycle hooks are isolated too (:data:`LIFECYCLE`): each implementation is guarded when its plugin
is registered, so a plugin that raises is named, and either skipped with one warning (observers:
progress, export, evaluator choice) or stops the run with one line (hooks whose answer the run
depends on: ``amoeba_on_plan`` may have half-amended the plan, ``amoeba_load_model`` was the model).
Registries are collected on first use, so listing commands (``amoeba --help``) calls no registration hook.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import AmoebaError, RegistrationError, UnknownNameError

GROUP = hookspecs.PROJECT
ENV_BLOCK = "AMOEBA_BLOCK_PLUGINS"
ENV_LOAD = "AMOEBA_LOAD_PLUGINS"
BUILTIN_PLUGINS = (
    "amoeba_plugin.builtin.architectures",
    "amoeba_plugin.builtin.exporters",
    "amoeba_plugin.builtin.datasets",
    "amoeba_plugin.builtin.evaluators",
    "amoeba_plugin.builtin.metrics",
    "amoeba_plugin.builtin.methods",
)
#: registration hook for each kind of thing a plugin can register
KINDS = {
    "methods": "amoeba_register_methods",
    "metrics": "amoeba_register_metrics",
    "exporters": "amoeba_register_exporters",
    "architectures": "amoeba_register_architectures",
    "evaluators": "amoeba_register_evaluators",
    "datasets": "amoeba_register_datasets",
}

#: what happens when a plugin's lifecycle hook raises: "skip" (warn once naming the plugin, then never
#: call that plugin's hook again in this process) or "stop" (a one-line PluginHookError naming it)
LIFECYCLE = {
    "amoeba_on_plan": "stop",
    "amoeba_load_model": "stop",
    "amoeba_on_progress": "skip",
    "amoeba_on_export": "skip",
    "amoeba_select_evaluator": "skip",
}


class PluginHookError(AmoebaError):
    """A plugin's lifecycle hook raised: names the plugin and the hook (one line in the CLI)."""

    def __init__(self, plugin: str, hook_name: str, exc: BaseException):
        super().__init__(f"plugin '{plugin}' failed in {hook_name}: {type(exc).__name__}: {exc}",
                         f"fix or upgrade the plugin, or run without it: {ENV_BLOCK}={plugin}")
        self.plugin, self.hook_name = plugin, hook_name


@dataclass
class PluginRecord:
    """What ``amoeba plugins`` shows for one plugin."""

    name: str
    origin: str  # "builtin" or "entry point"
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | partly loaded | failed | blocked | not selected
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    #: the ``amoeba`` commands it added (known once the CLI listed its commands)
    commands: list[str] = field(default_factory=list)
    #: hooks of this plugin that raised (registration or lifecycle)
    failed_hooks: list[str] = field(default_factory=list)
    #: warnings about this plugin (name clashes, failures), each also warned once per process
    warnings: list[str] = field(default_factory=list)

    def note_failure(self, hook_name: str, message: str) -> None:
        """Record that ``hook_name`` raised; the status follows: a plugin none of whose hooks worked
        is ``failed``, one with some failed is ``partly loaded``."""
        if hook_name not in self.failed_hooks:
            self.failed_hooks.append(hook_name)
        if self.error is None or message not in self.error:
            self.error = (self.error + "; " if self.error else "") + message
        if self.status in ("loaded", "partly loaded"):
            working = [h for h in self.hooks if h not in self.failed_hooks]
            self.status = "partly loaded" if working else "failed"


class _State:
    pm: pluggy.PluginManager | None = None
    records: dict[str, PluginRecord] = {}
    registries: dict[str, dict[str, Any]] = {}
    owners: dict[str, dict[str, str]] = {}


def _csv(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


_warned: set[str] = set()  # warnings about no known plugin, shown once


def _warn(message: str, record: PluginRecord | None = None) -> None:
    """Warn once: a warning about a plugin is kept on its record (``amoeba plugins`` lists it) and not
    shown again while the record lives, however often the registries are collected again."""
    seen = record.warnings if record is not None else _warned
    if message in seen:
        return
    seen.append(message) if isinstance(seen, list) else seen.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, loading plugins on first use."""
    if _State.pm is None:
        _load()
    return _State.pm


def _load() -> None:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    records: dict[str, PluginRecord] = {}
    blocked = _csv(os.environ.get(ENV_BLOCK)) or set()
    allow = _csv(os.environ.get(ENV_LOAD))
    version = _own_version()
    for modname in BUILTIN_PLUGINS:
        rec = PluginRecord(name=modname, origin="builtin", distribution="amoeba-plugin", version=version)
        records[modname] = rec
        if modname in blocked or modname.rsplit(".", 1)[-1] in blocked:
            rec.status = "blocked"
            continue
        try:
            pm.register(importlib.import_module(modname), name=modname)
        except Exception as exc:  # a broken built-in must not take the CLI down either
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            _warn(f"amoeba: built-in plugin {modname} failed to load ({rec.error})", rec)
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        rec = PluginRecord(name=ep.name, origin="entry point",
                           distribution=dist.metadata["Name"] if dist else None,
                           version=dist.version if dist else None)
        if ep.name in records:
            rec.status = "failed"
            rec.error = f"plugin name '{ep.name}' is already taken by {records[ep.name].distribution}"
            _warn(f"amoeba: {rec.error}; rename the entry point of {rec.distribution}", rec)
            records[f"{ep.name} ({rec.distribution})"] = rec
            continue
        records[ep.name] = rec
        if ep.name in blocked:
            rec.status = "blocked"
            continue
        if allow is not None and ep.name not in allow:
            rec.status = "not selected"
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            _warn(f"amoeba: plugin '{ep.name}' ({rec.distribution}) failed to load and was skipped: {rec.error}",
                  rec)
    for name, plugin in pm.list_name_plugin():
        if plugin is not None:
            _guard(pm, plugin, name)
            if name in records:
                records[name].hooks = sorted(c.name for c in (pm.get_hookcallers(plugin) or []))
    _State.pm, _State.records = pm, records
    _State.registries, _State.owners = {}, {}


def _guard(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Wrap each of ``plugin``'s lifecycle hook implementations so an exception names the plugin and
    follows the hook's :data:`LIFECYCLE` policy. Wrappers (``hookwrapper``/``wrapper``) are left alone."""
    for caller in pm.get_hookcallers(plugin) or []:
        policy = LIFECYCLE.get(caller.name)
        if policy is None:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.hookwrapper or getattr(impl, "wrapper", False)) \
                    and not getattr(impl.function, "_amoeba_guarded", False):
                impl.function = _guarded(impl.function, name, caller.name, policy)


def _guarded(function, plugin: str, hook_name: str, policy: str):
    state = {"off": False}

    def call(*args, **kwargs):
        if state["off"]:
            return None
        try:
            return function(*args, **kwargs)
        except AmoebaError as exc:
            if policy == "stop":
                raise  # already one line with a fix (a user error the plugin diagnosed)
            _skip(plugin, hook_name, exc, state)
        except Exception as exc:
            if policy == "stop":
                rec = _State.records.get(plugin)
                if rec is not None:
                    rec.note_failure(hook_name, f"{hook_name}: {type(exc).__name__}: {exc}")
                raise PluginHookError(plugin, hook_name, exc) from exc
            _skip(plugin, hook_name, exc, state)
        return None

    call._amoeba_guarded = True
    call.__wrapped__ = function
    return call


def _skip(plugin: str, hook_name: str, exc: BaseException, state: dict) -> None:
    state["off"] = True
    message = f"{hook_name}: {type(exc).__name__}: {exc}"
    rec = _State.records.get(plugin)
    if rec is not None:
        rec.note_failure(hook_name, message)
    _warn(f"amoeba: plugin '{plugin}' failed in {message}; its {hook_name} is skipped from now on "
          f"(block it with {ENV_BLOCK}={plugin})", rec)


def _own_version() -> str:
    try:
        return md.version("amoeba-plugin")
    except md.PackageNotFoundError:
        return "0+unknown"


def _collect(kind: str) -> None:
    """Call one registration hook plugin by plugin, so every entry knows its owner."""
    pm = _State.pm
    items: dict[str, Any] = {}
    owners: dict[str, str] = {}
    caller = getattr(pm.hook, KINDS[kind])
    for rec in _State.records.values():  # collected again after register_plugin/unregister_plugin
        rec.registered.pop(kind, None)
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
    # plugin registration order (built-ins first), so the first to register a name keeps it;
    # get_hookimpls() is ordered for calling (last registered is called first; tryfirst/trylast move)
    for impl in sorted(caller.get_hookimpls(), key=lambda i: order.get(i.plugin_name, len(order))):
        owner = impl.plugin_name
        rec = _State.records.get(owner)

        def register(obj: Any, *, _owner: str = owner) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise RegistrationError(f"{_owner} registered a {kind[:-1]} without a string .name",
                                        "give the object a non-empty `name` attribute")
            if name in items:
                raise RegistrationError(
                    f"{kind[:-1]} '{name}' from plugin '{_owner}' clashes with the one registered by "
                    f"plugin '{owners[name]}'", f"rename one of them, or block one with {ENV_BLOCK}")
            items[name], owners[name] = obj, _owner
            if rec is not None:
                rec.registered.setdefault(kind, []).append(name)

        before = len(items)
        try:
            impl.function(register=register) if "register" in impl.argnames else impl.function()
        except RegistrationError as exc:  # a refused name: what the hook registered before it stands
            _warn(f"amoeba: plugin '{owner}' failed in {KINDS[kind]}: {exc}", rec)
            if rec is not None and len(items) == before:  # nothing of this kind got through
                rec.note_failure(KINDS[kind], str(exc))
            elif rec is not None and (rec.error is None or str(exc) not in rec.error):
                rec.error = (rec.error + "; " if rec.error else "") + str(exc)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            _warn(f"amoeba: plugin '{owner}' failed in {KINDS[kind]}: {msg}", rec)
            if rec is not None:
                rec.note_failure(KINDS[kind], msg)
    _State.registries[kind], _State.owners[kind] = items, owners


def _registries_ready(kind: str) -> None:
    """Collect a registry on its first use (the manager alone loads no method or metric module)."""
    get_plugin_manager()
    if kind not in _State.registries:
        _collect(kind)


def registry(kind: str) -> dict[str, Any]:
    """All registered objects of one kind (``methods``, ``metrics``, ...), by name."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {sorted(KINDS)}")
    _registries_ready(kind)
    return dict(_State.registries[kind])


def owner(kind: str, name: str) -> str:
    """The plugin that registered ``name`` of ``kind``."""
    _registries_ready(kind)
    return _State.owners[kind][name]


def get(kind: str, name: str) -> Any:
    """One registered object, or an error that lists what is available."""
    items = registry(kind)
    if name not in items:
        raise UnknownNameError(
            f"no {kind[:-1]} named '{name}' (available: {', '.join(sorted(items)) or 'none'})",
            f"pick one of those, or install the plugin that provides '{name}' (see `amoeba plugins`)")
    return items[name]


def plugin_records() -> list[PluginRecord]:
    """Every plugin the host knows, with what it registered (this collects every registry)."""
    for kind in KINDS:
        _registries_ready(kind)
    return list(_State.records.values())


def note_commands(plugin: str, names: list[str]) -> None:
    """Record the ``amoeba`` commands a plugin added (called by the CLI when it loads them)."""
    get_plugin_manager()
    rec = _State.records.get(plugin)
    if rec is not None:
        rec.commands = sorted(set(rec.commands) | set(names))


def note_failure(plugin: str, hook_name: str, message: str, warning: str | None = None) -> None:
    """Record a failed hook of ``plugin`` found outside this module (the CLI's command hook), and warn
    ``warning`` once per process."""
    get_plugin_manager()
    rec = _State.records.get(plugin)
    if rec is not None:
        rec.note_failure(hook_name, message)
    if warning is not None:
        _warn(warning, rec)


def warn_once(plugin: str, message: str) -> None:
    """Warn ``message`` about ``plugin`` once per process; ``amoeba plugins`` lists it under the plugin."""
    get_plugin_manager()
    _warn(message, _State.records.get(plugin))


def hook():
    """The pluggy hook relay, for lifecycle hooks: ``hook().amoeba_on_plan(plan=..., context=...)``."""
    return get_plugin_manager().hook


def register_plugin(plugin: Any, name: str) -> None:
    """Register an in-process plugin object (tests, notebooks) and refresh the registries."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    _guard(pm, plugin, name)
    _State.records[name] = PluginRecord(name=name, origin="in process",
                                        hooks=sorted(c.name for c in (pm.get_hookcallers(plugin) or [])))
    for kind in KINDS:
        _collect(kind)


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _State.records.pop(name, None)
    for kind in KINDS:
        _collect(kind)


def reset() -> None:
    """Forget everything; the next access reloads (used by tests after changing the environment)."""
    _State.pm = None
    _State.records, _State.registries, _State.owners = {}, {}, {}
    _warned.clear()
