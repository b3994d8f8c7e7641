"""Built-in plugins. The host registers each module here exactly as it registers external ones."""
