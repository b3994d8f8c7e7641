"""``amoeba fetch NAME``: download a model into the cache."""
from __future__ import annotations

import click

from .common import status


@click.command()
@click.argument("name", type=click.Choice(["smollm2-135m"]))
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Cache directory.")
@click.option("--force", is_flag=True, help="Download and convert again.")
def fetch(name, cache, force):
    """Download a model into the cache (SmolLM2-135M, converted to safetensors)."""
    from ..smollm2 import fetch_smollm2

    with status(f"fetching {name}"):
        path = fetch_smollm2(cache=cache, force=force)
    click.echo(str(path))


__all__ = ["fetch"]
