"""`prefect-cs inputs …`: the web app's light calls (version, defaults, parse), by hand.

The same background tasks the web app calls, so an operator can check a model's
inputs without the web app; `serve` runs the task worker that answers them.
"""

from __future__ import annotations

import uuid

import typer
from prefect_cs.cli._utilities import CSTyper, console, read_json, split_model

inputs_app = CSTyper(help="The web app's light calls: version, defaults, parse.")


@inputs_app.command("version")
def inputs_version(name: str, tag: str = typer.Option(None)) -> None:
    from prefect_cs.flows.inputs import get_version

    console.print_json(data=get_version(*split_model(name), tag=tag))


@inputs_app.command("defaults")
def inputs_defaults(
    name: str, meta: str = typer.Option(None, "--meta", "-m"), tag: str = typer.Option(None)
) -> None:
    from prefect_cs.flows.inputs import get_defaults

    console.print_json(data=get_defaults(*split_model(name), read_json(meta), tag=tag))


@inputs_app.command("parse")
def inputs_parse(
    name: str,
    adjustment: str = typer.Option(..., "--adjustment", "-a"),
    meta: str = typer.Option(None, "--meta", "-m"),
    tag: str = typer.Option(None),
    errors_warnings: str = typer.Option(
        None,
        "--errors-warnings",
        "-e",
        help="What the web app's own parser found (C/S's errors_warnings, e.g. its \"API\" and"
        ' "GUI" sections), passed to validate_inputs as the web app passes it',
    ),
) -> None:
    from prefect_cs.flows.inputs import parse

    task_id = str(uuid.uuid4())
    given = read_json(errors_warnings) or None
    data = parse(*split_model(name), task_id, read_json(meta), read_json(adjustment), tag, given)
    console.print_json(data=data)


@inputs_app.command("serve")
def inputs_serve(
    model: str = typer.Option(
        None,
        "--model",
        help="OWNER/TITLE: serve only this model (its inputs server on a container tier)"
        " [default: CS_INPUTS_MODEL, else every model]",
    ),
) -> None:
    """Serve the inputs background tasks (a long-running task worker): every model's, or one's."""
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.inputs_server import serve

    model = model or get_settings().inputs_model
    if model:
        split_model(model)  # a bad name, from the flag or the variable, is refused here
    serve(model)
