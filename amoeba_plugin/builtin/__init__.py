"""Built-in plugins. The host registers each module here exactly as it registers external ones.

Each module imports what it registers inside its hook, so loading the plugins (``amoeba --help``)
imports neither torch nor transformers; the registries are filled on first use."""
