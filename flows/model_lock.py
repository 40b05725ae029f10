"""One writer at a time on a model's record (its CS Model Config block).

A block has no transactions: two publish runs of one model (two tags pushed at
once) each read the document, change it and write all of it back, so the last
writer wins — a promote of v3.10 could overwrite v3.20's, and a register could
write back the promoted tag it read before someone else's promote. Each write
of the record (register, stage, promote + deploy) therefore runs under a Prefect
global concurrency limit of one slot named after the model, held on the Prefect
server, so it holds across processes and workers; inside it the writer re-reads
the record, checks, and writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect_cs.core.names import slug

LOCK_TIMEOUT_SECONDS = 300  # a promote + deploy takes seconds; a stuck holder's lease ends too
LEASE_SECONDS = 120


def lock_name(owner: str, title: str) -> str:
    return f"cs-model-record-{slug(owner, title)}"


def ensure_lock(name: str) -> None:
    """The one-slot limit, created on first use (idempotent under concurrent first uses)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            except ObjectAlreadyExists:
                pass


@contextmanager
def model_record_lock(owner: str, title: str) -> Iterator[None]:
    """Hold the model's record lock; TimeoutError after LOCK_TIMEOUT_SECONDS of waiting."""
    name = lock_name(owner, title)
    ensure_lock(name)
    with concurrency(
        name,
        occupy=1,
        timeout_seconds=LOCK_TIMEOUT_SECONDS,
        lease_duration=LEASE_SECONDS,
        strict=True,
    ):
        yield
