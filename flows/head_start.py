"""The simulation's head start: the model's call started before the flow reaches it.

Why: on the Docker tier a call is a container, and its start (the engine, the model's import)
costs about a second. The flow hides it behind what it does before the call (HeadStart), and
a simulate run hides it further behind Prefect's own start: the engine imports the flow's
module before it proposes RUNNING, 3-4 s before the flow's first line on a busy host. So that
import (`begin_before_running`) reads the run's parameters and starts the call there; the
flow takes it when it reaches its call (`started_early`) if it is for exactly the model and
tag it loaded itself, and closes it otherwise. A speed-up only: any trouble here means the
call starts at its turn, as it would without, and reports there.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from uuid import UUID

from prefect.logging import get_logger
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.runtime.environment import model_env
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.tiers import get_tier
from prefect_cs.tiers.base import EarlyCaller

logger = get_logger("prefect_cs.head_start")
_STARTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cs-head-start")
SIMULATE_FLOW = "simulate"
TAKE_WITHIN = 60.0  # seconds the flow waits for a head start begun before it ran


def _start(model: ModelConfig, entry: PublishedTag) -> EarlyCaller | None:
    try:
        return get_tier(entry.tier).start_early(model, entry, model_env(model))
    except Exception:  # noqa: BLE001 - a missing secret, a bad image: the call reports it
        logger.debug("no head start", exc_info=True)
        return None


class HeadStart:
    """The tier's head start on the model's call (tiers/base.py `start_early`), set up in a
    thread of its own: reading the model's secrets and reaching the engine take a few tenths
    of a second the flow spends reading its inputs meanwhile."""

    def __init__(self, pending: Future[EarlyCaller | None]) -> None:
        self._pending = pending

    @classmethod
    def begin(cls, model: ModelConfig, entry: PublishedTag) -> HeadStart:
        context = contextvars.copy_context()  # the flow run's, for the secrets' blocks
        return cls(_STARTS.submit(context.run, _start, model, entry))

    def call(self, function: str, args: list) -> ModelCall | None:
        early = self._pending.result()
        return early.call(function, args) if early is not None else None

    def close(self) -> None:
        """Remove what was started, asked or not (a Kubernetes or process tier starts none)."""
        early = self._pending.result()
        if early is not None:
            early.close()


class _BeforeRunning:
    """The head start `begin_before_running` began, with what it was begun for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: Future[tuple[ModelConfig, PublishedTag, HeadStart] | None] | None = None


_BEFORE_RUNNING = _BeforeRunning()


def begin_before_running() -> None:
    """In the engine's process, while it imports the flow's module: begin the head start of
    the run PREFECT__FLOW_RUN_ID names, if it is a simulate run. Nothing elsewhere (a test, a
    CLI, another flow importing this module)."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()  # PREFECT__FLOW_RUN_ID, set by the worker for the engine
    if not run_id:
        return
    with _BEFORE_RUNNING.lock:
        if _BEFORE_RUNNING.pending is None:
            _BEFORE_RUNNING.pending = _STARTS.submit(_for_run, run_id)


def _for_run(run_id: str) -> tuple[ModelConfig, PublishedTag, HeadStart] | None:
    """The run's model and tag, as the flow will load them, and their head start."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
            if client.read_flow(run.flow_id).name != SIMULATE_FLOW:
                return None
        params = run.parameters
        model = ModelConfig.for_model(params["owner"], params["title"])
        entry = model.published(params.get("tag"))
        return model, entry, HeadStart(_STARTS.submit(_start, model, entry))
    except Exception:  # noqa: BLE001 - the flow starts its own, and reports what is wrong
        logger.debug("no head start before running", exc_info=True)
        return None


def _take(model: ModelConfig, entry: PublishedTag) -> HeadStart | None:
    """The head start begun before running if it is for exactly this model and tag (a config
    published between the two reads is another image); one for anything else is closed."""
    with _BEFORE_RUNNING.lock:
        pending, _BEFORE_RUNNING.pending = _BEFORE_RUNNING.pending, None
    if pending is None:
        return None
    try:
        begun = pending.result(timeout=TAKE_WITHIN)
    except Exception:  # noqa: BLE001 - too slow or failed: start one now
        pending.add_done_callback(_close_begun)
        return None
    if begun is None:
        return None
    begun_model, begun_entry, head_start = begun
    if begun_model.model_dump() == model.model_dump() and begun_entry == entry:
        return head_start
    head_start.close()
    return None


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _close_begun(pending: Future) -> None:
    with contextlib.suppress(Exception):
        if (begun := pending.result()) is not None:
            begun[2].close()


def discard_before_running() -> None:
    """A flow that ends before its call (a bad task id, its model gone) leaves no container."""
    with _BEFORE_RUNNING.lock:
        pending, _BEFORE_RUNNING.pending = _BEFORE_RUNNING.pending, None
    if pending is not None:
        pending.add_done_callback(_close_begun)


@contextlib.contextmanager
def started_early(model: ModelConfig, entry: PublishedTag) -> Iterator[HeadStart]:
    """The head start for this call (begun before running, or now), closed when the flow is
    done with it, asked or not."""
    head_start = _take(model, entry)
    if head_start is not None:
        _run_logger().info("the model's call was started before this run was RUNNING")
    else:
        head_start = HeadStart.begin(model, entry)
    try:
        yield head_start
    finally:
        head_start.close()
