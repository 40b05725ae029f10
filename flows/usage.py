"""What each simulation cost, kept in Prefect and totalled per model over a period.

Compute Studio bills users by the compute they use. Every simulate run, SUCCESS or
FAIL, records one row (model, task, status, run time, CPU-seconds, peak memory, as
sent in the result's meta) in a table artifact keyed `usage-<owner>-<title>`: Prefect
keeps every version of a key, so a model's runs are one artifact history, readable
with one filtered query and independent of result persistence (a failed run has no
result) and of which deployment or Quick run started it. `prefect-cs models usage`
totals them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prefect.artifacts import create_table_artifact

PAGE = 200


def usage_key(owner: str, title: str) -> str:
    """An artifact key allows lowercase letters, digits and dashes; rows name the model exactly,
    so two models that clean to the same key are still told apart."""
    return re.sub(r"[^a-z0-9-]", "-", f"usage-{owner}-{title}".lower())[:100]


def usage_row(owner: str, title: str, task_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    return {
        "model": f"{owner}/{title}",
        "task_id": task_id,
        "status": payload.get("status"),
        "run_seconds": round(sum(meta.get("task_times") or [0.0]), 3),
        "cpu_seconds": meta.get("cpu_seconds", 0.0),
        "peak_memory_mib": meta.get("peak_memory_mib", 0.0),
    }


def record_usage(owner: str, title: str, task_id: str, payload: dict[str, Any]) -> None:
    """One row for this run, in the flow run that made it."""
    row = usage_row(owner, title, task_id, payload)
    create_table_artifact(
        table=[row],
        key=usage_key(owner, title),
        description=f"What task {task_id} of {owner}/{title} cost ({row['status']})",
    )


def model_usage(
    owner: str, title: str, since: datetime, until: datetime | None = None
) -> dict[str, Any]:
    """The runs of OWNER/TITLE recorded in [since, until): their count and summed cost."""
    model = f"{owner}/{title}"
    rows = [r for r in usage_rows(usage_key(owner, title), since, until) if r.get("model") == model]
    return {
        "model": model,
        "since": since.isoformat(),
        "until": until.isoformat() if until else None,
        "runs": len(rows),
        "failed": sum(1 for r in rows if r.get("status") == "FAIL"),
        "run_seconds": round(sum(_number(r, "run_seconds") for r in rows), 3),
        "cpu_seconds": round(sum(_number(r, "cpu_seconds") for r in rows), 3),
        "peak_memory_mib": max((_number(r, "peak_memory_mib") for r in rows), default=0.0),
    }


def usage_rows(key: str, since: datetime, until: datetime | None) -> Iterator[dict[str, Any]]:
    """Every row under `key` created in [since, until), newest first, read page by page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    only = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    with get_client(sync_client=True) as client:
        for offset in range(0, 10**9, PAGE):
            page = client.read_artifacts(
                artifact_filter=only, sort=ArtifactSort.CREATED_DESC, limit=PAGE, offset=offset
            )
            for artifact in page:
                if artifact.created and artifact.created < since:
                    return
                if until is None or (artifact.created and artifact.created < until):
                    yield from _table(artifact.data)
            if len(page) < PAGE:
                return


def _table(data: object) -> list[dict[str, Any]]:
    rows = json.loads(data) if isinstance(data, str) else data
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _number(row: dict[str, Any], name: str) -> float:
    value = row.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
