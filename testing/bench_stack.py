"""The fresh temporary stack the cluster API benchmarks measure (api_latency.py, burst.py).

Both need the same thing before the first timed call: a Prefect server (on
SQLite, or on the stack's own PostgreSQL with Redis messaging), the workers they
time, the web app stand-in, the blocks, the pool, the WebApp block, the cluster
API token, the misbehaving sample app registered and published, and the cluster
API answering its health check; and all of it stopped afterwards, whatever
happened. Written once here, so a figure measured on one script's stack is
measured on the other's, and a new database or pool reaches both.

Only the stack's own functions start things (services/stack.py, its PostgreSQL
and messaging Redis, testing/docker_tier.py for the engine and registry): the
benchmark's stack is the operator's, not a copy of it.

Prefect reads its settings once, at import: call `scratch_environment` (which
this module's callers do at their top) before importing this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from prefect_cs.blocks.webapp import WebApp
from prefect_cs.security.secrets import get_backend
from prefect_cs.services import stack, stack_blocks, stack_login, stack_parts
from prefect_cs.testing.docker_tier import docker_tier, ensure_docker, registry_settings
from prefect_cs.testing.models import make_repo, publish_model, register_model
from prefect_cs.testing.scratch import free_port, repos_folder
from prefect_cs.testing.webapp_standin import WebAppStub
from prefect_cs.tiers import Tier, get_tier
from prefect_cs.work_pools.pools import ensure_pool

Database = Literal["sqlite", "postgresql"]
PoolType = Literal["process", "docker"]
DATABASES: tuple[Database, ...] = ("sqlite", "postgresql")
POOL_TYPES: tuple[PoolType, ...] = ("process", "docker")

TOKEN = "bench-token"
OWNER, TITLE = "bench", "Misbehaving"
API_START_SECONDS = 120  # a loaded 2-core machine starts the API's process slowly


@dataclass(frozen=True)
class BenchStack:
    """What a benchmark needs of the running stack."""

    url: str  # the cluster API, e.g. http://127.0.0.1:PORT
    token: str  # its bearer token (the web app's)
    stub: WebAppStub  # the web app stand-in: every PUT the platform sent
    repo: Path  # the misbehaving app's git repository, published at v1
    database: Database
    pool_type: PoolType
    pool: str  # the work pool's name

    @property
    def label(self) -> str:
        """Where the figures were measured, for every printed line."""
        return f"{self.database} server, {self.pool_type} pool"


@contextmanager
def bench_stack(
    work: Path,
    *,
    database: Database = "sqlite",
    pool_type: PoolType = "process",
    pool_worker: bool = True,
) -> Iterator[BenchStack]:
    """Start the stack in the scratch folder `work`, yield it with the app published, stop it.

    `pool_worker` False leaves the pool without a worker (simulations are
    acknowledged, never run): the API latency benchmark times acknowledgements only.
    """
    stack.choose(database, None)
    if pool_type == "docker":
        prepare_docker()
    tier = tier_of(pool_type)
    with ExitStack() as cleanup:
        cleanup.callback(stack.stop_database)  # last: after the server (none on SQLite)
        start_server(cleanup)
        if pool_type == "docker":
            os.environ.update(registry_settings())  # the cs-registry block, on this server
        port = free_port()
        api = stack_parts.api_server(port)
        parts = [stack_parts.inputs_worker(), api]
        if pool_worker:
            parts.insert(0, stack_parts.pool_worker(tier.pool_name, tier.pool_type))
        stub = WebAppStub().start()
        cleanup.callback(stub.stop)
        repo = prepare_platform(work, stub, tier.pool_name, pool_type)
        for part in parts:
            cleanup.callback(part.stop)
            part.start()
        url = f"http://127.0.0.1:{port}"
        healthy = partial(stack_parts.answers_health, url)
        api.start_and_wait(healthy, API_START_SECONDS, what="the cluster API")
        yield BenchStack(url, TOKEN, stub, repo, database, pool_type, tier.pool_name)


def tier_of(pool_type: PoolType) -> Tier:
    """The benchmarks' "docker pool" is the Docker tier's (a process pool, its models in
    containers); "process" is the local tier's."""
    return get_tier("docker" if pool_type == "docker" else "local")


def prepare_docker() -> None:
    """The engine and the local registry (started if needed) and the base image built locally
    (no registry to pull from); the registry's login is saved once the server is up."""
    ensure_docker()


def start_server(cleanup: ExitStack) -> None:
    """The database (PostgreSQL and messaging Redis, or nothing for SQLite), then the server."""
    stack.start_database()
    server = stack_parts.PrefectServer(
        api_url=stack_login.api_url(), extra_env=stack.database_environment()
    )
    cleanup.callback(server.stop)
    server.start()


def prepare_platform(work: Path, stub: WebAppStub, pool: str, pool_type: PoolType) -> Path:
    """Blocks, the pool, the WebApp block and API token; the misbehaving app published at v1
    on `pool_type`'s tier. Its repository's path."""
    stack_blocks.register_blocks()
    stack_blocks.ensure_storage_blocks()
    ensure_pool(pool, tier_of(pool_type).pool_type)
    WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)
    get_backend(None).set("CLUSTER_API_TOKEN", TOKEN)
    repo = make_repo("misbehaving-app", repos_folder(work) / "repo")
    register_model(OWNER, TITLE, repo, repo_tag="v1", time_limit=60)
    with docker_tier() if pool_type == "docker" else nullcontext():
        state = publish_model(OWNER, TITLE)
    if not state.is_completed():
        raise RuntimeError(f"publishing {OWNER}/{TITLE} on the {pool_type} pool: {state.message}")
    return repo
