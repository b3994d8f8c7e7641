"""The public-module list in docs/architecture.md is what plugins may import, and it is enforced."""
import ast
import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def public_modules() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- public-modules: start -->")[1].split("<!-- public-modules: end -->")[0]
    return set(re.findall(r"`(amoeba_plugin(?:\.[a-z_.]+)?)`", block))


def is_public(module: str, public: set[str]) -> bool:
    if any(part.startswith("_") for part in module.split(".")):
        return False
    return module in public or any(module.startswith(p + ".") for p in public if p != "amoeba_plugin")


def plugin_imports():
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "amoeba_plugin" or name.startswith("amoeba_plugin."):
                    yield path.relative_to(ROOT), node.lineno, name


def test_every_listed_public_module_exists():
    public = public_modules()
    assert {"amoeba_plugin.api", "amoeba_plugin.pipeline", "amoeba_plugin.cli.options"} <= public
    for name in public:
        importlib.import_module(name)


def test_plugins_import_only_public_modules():
    public = public_modules()
    outside = [f"{path}:{line}: {name}" for path, line, name in plugin_imports() if not is_public(name, public)]
    assert not outside, "plugins import modules missing from docs/architecture.md's public list:\n" + "\n".join(outside)


def test_the_check_catches_a_private_import():
    public = public_modules()
    assert not is_public("amoeba_plugin.builtin.methods", public)
    assert not is_public("amoeba_plugin._moved", public)
    assert not is_public("amoeba_plugin.cli.prune", public)
    assert is_public("amoeba_plugin.eval.scorers", public)
