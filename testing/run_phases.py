"""Where a flow run's time went, from the Prefect API's own records: its state history and its
task runs, as seconds after the run was created. Benchmarks print it beside their figures, so a
regression shows which step grew (worker pick-up, interpreter start, the model call, ...)."""

from __future__ import annotations

import statistics
from typing import Any
from uuid import UUID


def run_phases(client: Any, run_id: UUID) -> dict[str, float]:
    """`<STATE>`: when the run first entered it; `<task>>`: when the task began; `<task>`: how
    long it ran. Seconds after the run was created."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = client.read_flow_run(run_id)
    found: dict[str, float] = {}
    for state in client.read_flow_run_states(run_id):
        found.setdefault(state.type.value, (state.timestamp - run.created).total_seconds())
    runs_of = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    for task in client.read_task_runs(flow_run_filter=runs_of):
        if task.start_time and task.end_time:
            name = task.name.rsplit("-", 1)[0]
            found[f"{name}>"] = (task.start_time - run.created).total_seconds()
            found[name] = (task.end_time - task.start_time).total_seconds()
    return found


def median_phases(run_ids: list[UUID]) -> list[tuple[str, float]]:
    """Each phase's median over the runs, in the order they happen."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        rows = [run_phases(client, run_id) for run_id in run_ids]
    names = {name for row in rows for name in row}
    medians = {name: statistics.median(row[name] for row in rows if name in row) for name in names}
    return sorted(medians.items(), key=lambda item: item[1])
