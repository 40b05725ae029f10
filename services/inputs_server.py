"""The inputs server: a Prefect task worker answering version, defaults and parse.

On the embedded tier one shared server answers every model (its virtualenvs
are on this machine); on container tiers each model's image runs one for that
model alone (CS_INPUTS_MODEL=OWNER/TITLE), subscribed to its own task keys.
Run it with `prefect-cs inputs serve [--model OWNER/TITLE]` or
`python -m prefect_cs.services.inputs_server`.
"""

from __future__ import annotations

from prefect import Task
from prefect_cs.core.names import check_name
from prefect_cs.core.settings import get_settings
from prefect_cs.core.task_storage import task_storage
from prefect_cs.flows.inputs import defaults_task, for_model, parse_task, version_task


def served_tasks(model: str | None = None) -> list[Task]:
    """Every model's tasks (the shared worker), or one model's (CS_INPUTS_MODEL=OWNER/TITLE)."""
    tasks = [version_task, defaults_task, parse_task]
    if not model:
        return tasks
    owner, _, title = model.partition("/")
    check_name("owner", owner)
    check_name("title", title)
    return [for_model(t, owner, title) for t in tasks]


def serve(model: str | None = None) -> None:
    """Run the inputs task worker until stopped: shared, or for one model."""
    from prefect.task_worker import serve as serve_tasks

    with task_storage():
        serve_tasks(*served_tasks(model or get_settings().inputs_model), limit=20)


if __name__ == "__main__":
    serve()
