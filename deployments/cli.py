"""The operator CLI, `prefect-cs`, built with typer and rich like Prefect's own."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="prefect-cs",
    help="Publish Compute Studio model apps and run their simulations on Prefect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
