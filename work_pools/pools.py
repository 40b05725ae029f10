"""Work pools from the base job templates kept as JSON beside this module."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The template in work_pools/<type>.json; the worker type's own default when there is none."""
    path = resources.files("prefect_cs.work_pools") / f"{pool_type}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from prefect.workers.process import ProcessWorker

    if pool_type != "process":
        raise FileNotFoundError(f"no base job template for pool type {pool_type!r} ({path})")
    return ProcessWorker.get_default_base_job_template()


def ensure_pool(name: str, pool_type: str) -> None:
    """Create the pool, or update its template so the JSON in the repository is what runs.

    `pool_type` is a tier's (prefect_cs.tiers): an unknown one is refused, naming the valid
    ones, before the server is asked.
    """
    from prefect_cs.tiers import tier_for_pool_type

    tier_for_pool_type(pool_type)
    template = base_job_template(pool_type)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
            )
            return
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
