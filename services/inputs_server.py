"""The inputs server: a Prefect task worker answering version, defaults and parse.

One shared server answers every model of the process and Docker tiers: it keeps
each model warm itself (a sandboxed process of its virtualenv, or a confined
container of its image). On Kubernetes each model has a server of its own
(CS_INPUTS_MODEL=OWNER/TITLE) in the platform's image, subscribed to its own
task keys, beside the model's container.
Run it with `prefect-cs inputs serve [--model OWNER/TITLE]` or
`python -m prefect_cs.services.inputs_server`.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading

from prefect import Task
from prefect.logging import get_logger
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.blocks import load_collections_first
from prefect_cs.core.names import check_name
from prefect_cs.core.settings import get_settings
from prefect_cs.core.task_storage import task_storage
from prefect_cs.flows.inputs import (
    defaults_task,
    for_model,
    parse_task,
    stop_warm,
    version_task,
)

logger = get_logger("prefect_cs.inputs_server")


def served_tasks(model: str | None = None) -> list[Task]:
    """Every model's tasks (the shared worker), or one model's (CS_INPUTS_MODEL=OWNER/TITLE)."""
    tasks = [version_task, defaults_task, parse_task]
    if not model:
        return tasks
    owner, _, title = model.partition("/")
    check_name("owner", owner)
    check_name("title", title)
    return [for_model(t, owner, title) for t in tasks]


def served_models(model: str | None = None) -> list[ModelConfig]:
    """The one model of a pod's server, or every model the shared server answers for (those
    whose promoted tag's tier keeps its models warm on the shared worker)."""
    if model:
        owner, _, title = model.partition("/")
        return [ModelConfig.for_model(owner, title)]
    from prefect_cs.registry.configs import all_models

    return [m for m in all_models() if served_here(promoted_tier(m))]


def served_here(tier: str | None) -> bool:
    from prefect_cs.tiers import get_tier

    return tier is not None and get_tier(tier).inputs_on_shared_worker


def promoted_tier(model: ModelConfig) -> str | None:
    try:
        return model.published().tier
    except LookupError:  # registered, never promoted
        return None


def warm_served(model: str | None = None) -> int:
    """Start each served model's process and cache its default inputs, so the web app's first
    call after a (re)start is neither a cold import nor a model call; returns how many."""
    warmed = 0
    try:
        models = served_models(model)
    except Exception as exc:  # noqa: BLE001 - warming is a speed-up, never a reason not to serve
        logger.warning("could not list the models to warm: %s; warming at start done", exc)
        return 0
    for config in models:
        answer = defaults_task.fn(config.owner, config.title, {}, None, warm=True)  # no raise
        warmed += answer.get("status") == "SUCCESS"
        logger.info("warmed %s/%s: %s", config.owner, config.title, answer.get("status"))
    logger.info("warming at start done: %d of %d model(s)", warmed, len(models))
    return warmed


def serve(model: str | None = None) -> None:
    """Run the inputs task worker until stopped: shared, or for one model; each served model
    is warmed alongside."""
    from prefect.task_worker import serve as serve_tasks

    model = model or get_settings().inputs_model
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_once)
        # `kill -USR1 <pid>` writes every thread's stack to the log: where a stuck server is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    collections = load_collections_first()  # before the warming thread and the task worker
    logger.info("Prefect collections loaded before any thread: %s", ", ".join(collections))
    try:
        with task_storage():
            threading.Thread(target=warm_served, args=(model,), daemon=True).start()
            serve_tasks(*served_tasks(model), limit=20)
    finally:
        stop_warm()


def _exit_once(*_: object) -> None:
    """A stop (SIGTERM) unwinds like Ctrl-C, so the warm processes and containers go with it;
    a second SIGTERM (the stack sends two) must not cut that cleanup short and leave a
    container running, so from the first on, SIGTERM is ignored (SIGKILL still ends it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(0)


if __name__ == "__main__":
    serve()
