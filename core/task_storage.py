"""Where background tasks keep their parameters and results: one block both sides must agree on.

The inputs calls are Prefect background tasks. The submitter (CLI, cluster
API) and the task worker (the inputs server, on this machine or in a model's
container) must point Prefect at the same storage block, or the worker drops
the task run and the caller gets ObjectNotFound (see DESIGN, known pitfalls).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.settings import (
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK,
    temporary_settings,
)

TASK_STORAGE_BLOCK = "local-file-system/cs-task-storage"


def task_storage_env() -> dict[str, str]:
    """The same settings as environment variables, for processes and containers we start."""
    return {
        "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": TASK_STORAGE_BLOCK,
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": TASK_STORAGE_BLOCK,
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }


@contextlib.contextmanager
def task_storage() -> Iterator[None]:
    """Within this block, this process submits and serves tasks through the shared storage."""
    with temporary_settings(
        updates={
            PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK: TASK_STORAGE_BLOCK,
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: TASK_STORAGE_BLOCK,
        }
    ):
        yield
