"""Work pools from the base job templates kept as JSON beside this module, with admission control.

A burst of simulations must wait in Prefect, not thrash the machine: each pool
starts at most `pool_concurrency` runs at once (sized to the machine unless set),
and has two queues — simulations first, publishes after (at most one at a time),
so a queued publish never goes before a waiting simulation. A model's own limit
(ModelConfig.max_concurrent_simulations, Compute Studio's cost control) is its
deployment's concurrency limit (deployments/deploy.py).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from importlib import resources
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect_cs.core.errors import ConfigError
from prefect_cs.core.settings import get_settings

SIMULATIONS_QUEUE = "simulations"
PUBLISHES_QUEUE = "publishes"
# name: (priority, concurrency limit); 1 is the highest priority
QUEUES: dict[str, tuple[int, int | None]] = {SIMULATIONS_QUEUE: (1, None), PUBLISHES_QUEUE: (2, 1)}
GIB_PER_RUN = 2  # a run's flow and its model, at the default memory


def machine_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def pool_concurrency(pool_type: str) -> int | None:
    """How many runs the pool starts at once; None is no limit."""
    configured = get_settings().pool_concurrency
    if configured is not None:
        return configured or None
    cores = os.cpu_count() or 1
    if (
        pool_type == "process"
    ):  # the process tier's, and the Docker tier's flows with their containers
        return max(1, min(cores, int(machine_memory_gib() // GIB_PER_RUN)))
    return None  # kubernetes: the cluster's autoscaler and resource quotas decide


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The template in work_pools/<type>.json; for process pools, Prefect's own with the engine
    command filled in (`engine_command`)."""
    path = resources.files("prefect_cs.work_pools") / f"{pool_type}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from prefect.workers.process import ProcessWorker

    if pool_type != "process":
        raise FileNotFoundError(f"no base job template for pool type {pool_type!r} ({path})")
    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = engine_command()
    return template


def engine_command() -> str:
    """A process pool's flow runs start Prefect's engine directly, in the platform's interpreter
    (the one making the pool: workers run the same installation), through flows/engine.py, which
    begins the simulation's head start first. Left blank, Prefect's process worker first starts
    a workspace supervisor, a second interpreter importing Prefect to look for a uv project the
    platform does not have, and only then the engine: about 1 s more per run
    (benchmarks/docker_split.py shows it as the gap between the worker's submission and the
    flow's first log line)."""
    return shlex.join([sys.executable, "-m", "prefect_cs.flows.engine"])


def ensure_pool(name: str, pool_type: str) -> None:
    """Create the pool, or update its template so the JSON in the repository is what runs.

    `pool_type` is a tier's (prefect_cs.tiers): an unknown one is refused, naming the valid
    ones, before the server is asked.
    """
    from prefect_cs.tiers import tier_for_pool_type

    tier_for_pool_type(pool_type)
    template, limit = base_job_template(pool_type), pool_concurrency(pool_type)
    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type=pool_type, base_job_template=template, concurrency_limit=limit
                )
            )
        else:
            check_type(name, found.type, pool_type)
            update = WorkPoolUpdate(base_job_template=template, concurrency_limit=limit)
            client.update_work_pool(name, update)
        ensure_queues(client, name)


def check_type(name: str, found: str, wanted: str) -> None:
    """A pool of another type cannot take this template (the Docker tier's pool was a `docker`
    pool before its flows moved to the host): refuse, naming the fix, rather than rewrite it."""
    if found != wanted:
        raise ConfigError(
            f"work pool {name!r} is a {found!r} pool, and this tier's runs need a {wanted!r} pool:"
            f" delete it (`prefect work-pool delete {name}`; its runs' history stays) and run"
            " `prefect-cs pool <tier>` or publish again, which creates it anew"
        )


def ensure_queues(client: SyncPrefectClient, pool: str) -> None:
    """The simulations and publishes queues, with their priorities and limits."""
    for queue, (priority, limit) in QUEUES.items():
        try:
            client.create_work_queue(
                name=queue, work_pool_name=pool, priority=priority, concurrency_limit=limit
            )
        except ObjectAlreadyExists:
            found = client.read_work_queue_by_name(queue, work_pool_name=pool)
            client.update_work_queue(found.id, priority=priority, concurrency_limit=limit)
