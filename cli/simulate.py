"""`prefect-cs simulate OWNER/TITLE`: run a simulation exactly as the web app would.

An operator's end-to-end check of a published model: the run goes through the
model's deployment, and the outputs' location is printed for inspection, only
when the run completed (a failed run stored none).
"""

from __future__ import annotations

import uuid

import typer
from prefect_cs.cli._utilities import console, read_json, split_model


def simulate_cmd(
    name: str,
    adjustment: str = typer.Option(None, "--adjustment", "-a", help="JSON object or .json file"),
    meta: str = typer.Option(
        None, "--meta", "-m", help="meta_param_dict: JSON object or .json file"
    ),
    tag: str = typer.Option(None, help="Tag to run (default: the promoted one)."),
    wait: float = typer.Option(600, help="Seconds to wait for the run; 0 to return at once."),
) -> None:
    """Run a simulation through the model's deployment (as the web app does) and wait for it."""
    from prefect_cs.deployments.submit import submit_simulation

    owner, title = split_model(name)
    task_id = str(uuid.uuid4())
    run = submit_simulation(
        owner, title, read_json(meta), read_json(adjustment), tag, task_id, wait
    )
    console.print(f"flow run [bold]{run.name}[/bold] ({run.id}) task {task_id}: {run.state_name}")
    if run.state and run.state.is_final():
        console.print(f"  {run.state.message}")
        if not run.state.is_completed():
            # A failed run stored no zips: naming them would send the operator to files that do
            # not exist. The web app got the FAIL and its traceback.
            raise typer.Exit(1)  # the state line above is the message
        show_outputs(task_id)


def show_outputs(task_id: str) -> None:
    """Where the run's two zips are, when the outputs block can be read."""
    from prefect_cs.core.settings import get_settings

    storage = get_settings().outputs_block
    console.print(
        f"  outputs: {task_id}_renderable.zip, {task_id}_downloadable.zip in block {storage}"
    )
    try:
        from prefect_cs.core.blocks import load_outputs_storage

        block = load_outputs_storage()
        basepath = getattr(block, "basepath", None) or getattr(block, "bucket", None)
        if basepath:
            console.print(f"  at: {basepath}/{task_id}_renderable.zip")
    except LookupError:
        pass
