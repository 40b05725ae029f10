"""What a simulate run sent the web app, recorded as data for the cluster API to read.

`GET /{owner}/{title}/runs/{task_id}` says whether a run sent SUCCESS or FAIL and whether
the web app took it. The API used to work that out from the start of, and a substring in,
the run's state message, so rewording that message for people silently broke the API. The
simulate flow now writes its outcome (task id, status, delivered) into the metadata of the
outputs artifact it already makes (`outputs-<task_id>`; Prefect keeps artifact metadata as
strings), and the API reads that; the state message is for people only.

Runs that finished before this record existed have no such metadata: for them alone,
`read_outcome` still reads the message in the wording those runs wrote (LEGACY_*).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

STATUSES = ("SUCCESS", "FAIL")
# The state message of runs written before the outcome was data: "<STATUS> in 1.23s; web app
# notified" or "...; web app NOT notified, result kept". Read only for runs without metadata.
LEGACY_DELIVERED = "web app notified"


@dataclass(frozen=True)
class Outcome:
    """status: SUCCESS, FAIL, or None (the run sent nothing, or cannot say); delivered: whether
    the web app accepted it, None where unknown."""

    status: str | None
    delivered: bool | None


def outputs_key(task_id: str) -> str:
    """The outputs artifact's key: lowercase, at most 100 characters (Prefect's rule)."""
    return f"outputs-{task_id}".lower()[:100]


def outcome_metadata(task_id: str, status: str, delivered: bool) -> dict[str, str]:
    """The outcome as artifact metadata (string to string)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}: build it in payloads")
    return {"task_id": task_id, "status": status, "delivered": "true" if delivered else "false"}


def write_outputs_artifact(
    task_id: str, rows: list[dict[str, Any]], description: str, outcome: dict[str, str]
) -> None:
    """The outputs table, with the outcome as its metadata, on the current flow run
    (prefect.artifacts.create_table_artifact cannot set metadata)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.utilities.context import get_task_and_flow_run_ids

    _, flow_run_id = get_task_and_flow_run_ids()
    artifact = ArtifactCreate(
        type="table",
        key=outputs_key(task_id),
        description=description,
        data=json.dumps(rows),
        metadata_=outcome,
        flow_run_id=flow_run_id,
    )
    with get_client(sync_client=True) as client:
        client.create_artifact(artifact=artifact)


def recorded_outcome(metadata: Mapping[str, str] | None) -> Outcome | None:
    """The outcome the run wrote, or None where it wrote none (an older run, a failed write)."""
    if not metadata or metadata.get("status") not in STATUSES:
        return None
    delivered = metadata.get("delivered")
    return Outcome(metadata["status"], None if delivered is None else delivered == "true")


def legacy_outcome(message: str) -> Outcome:
    """For runs without a recorded outcome: what the old state message said."""
    status = next((s for s in STATUSES if message.startswith(s)), None)
    return Outcome(status, None if not message else LEGACY_DELIVERED in message)


def read_outcome(artifact: Any, run_id: UUID, message: str) -> Outcome:
    """The run's outcome from its own outputs artifact (another run's with the same task id
    does not count), else from its state message."""
    if artifact is not None and artifact.flow_run_id == run_id:
        recorded = recorded_outcome(artifact.metadata_)
        if recorded is not None:
            return recorded
    return legacy_outcome(message)
