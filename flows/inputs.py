"""The web app's light calls — version, defaults, parse — as Prefect background tasks.

A task worker (`python -m prefect_cs.services.inputs_server`, started by `prefect-cs
stack start`) serves them with warm model processes. The caller-side functions
answer a cached `defaults` straight from storage, without a task round trip.

Submitter and worker share one storage block for task parameters and results
(PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK and
PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK), or the worker drops the task run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import Task, task
from prefect.blocks.core import Block
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.blocks import load_storage_block
from prefect_cs.core.json_depth import check_inputs
from prefect_cs.core.names import check_task_id, slug
from prefect_cs.core.settings import get_settings
from prefect_cs.core.task_storage import TASK_STORAGE_BLOCK, task_storage
from prefect_cs.flows.notify import INPUTS_PATH, deliver
from prefect_cs.flows.payloads import (
    answer_fail,
    answer_success,
    parse_fail,
    parse_success,
    sendable,
)
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.environment import call_bounds, model_env, scrubber_for
from prefect_cs.tiers import get_tier
from prefect_cs.tiers.base import WarmCaller

LIGHT_CALL_LIMIT = 30.0
_warm: dict[tuple[str, str], WarmCaller] = {}
_warm_lock = threading.Lock()  # the table only: never held across a start or a stop
_warm_generation = 0  # counts stop_warm calls: a start that a stop overtook is not kept
_model_locks: dict[str, threading.Lock] = {}
_defaults_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_lock = threading.Lock()


@functools.cache
def _storage() -> Block:
    """Loaded once per process: the block is read on every cached answer."""
    return load_storage_block(
        TASK_STORAGE_BLOCK, "task storage block", "run `prefect-cs stack start`"
    )


def cache_path(model: ModelConfig, tag: str, identity: dict[str, Any]) -> str:
    """Where a tag's defaults for these meta parameters are kept; `identity` is what
    defaults_identity made of the request ({} for the model's own defaults)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return f"inputs-cache/{model.slug}/{tag}/{digest}.json"


def _plain(value: Any) -> Any:
    """A meta parameter's value without ParamTools' wrapping: C/S sends its specification
    ({"year": [{"value": 2026}]}), a person may send {"year": 2026}; both mean the same."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if set(value[0]) == {"value"}:
            return value[0]["value"]
    return value


def meta_values(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The resolved meta parameter values of a SUCCESS defaults answer ({name: value}), or None
    for a FAIL. ParamTools' dump also holds a "schema" entry, which is no parameter."""
    if not answer or answer.get("status") != "SUCCESS":
        return None
    specs = answer.get("meta_parameters")
    if not isinstance(specs, dict):
        return None
    return {
        name: _plain(spec["value"])
        for name, spec in specs.items()
        if name != "schema" and isinstance(spec, dict) and "value" in spec
    }


def defaults_identity(
    meta_param_dict: dict[str, Any], base: dict[str, Any] | None
) -> dict[str, Any]:
    """One key per (model, tag, resolved meta parameters): C/S asks with {} and then with the
    values {} resolved to (model_parameters.py), which must be one cache entry, not a second
    cold model call. `base` is the resolved values of the {} answer (None until it is known);
    {} stands for "the model's defaults"."""
    plain = {name: _plain(value) for name, value in meta_param_dict.items()}
    if base is None:
        return plain
    resolved = {**base, **plain}
    return {} if resolved == base else resolved


def _read_cached(path: str) -> dict[str, Any] | None:
    """A kept answer, or None: a miss or an unreadable entry falls through to the model."""
    try:
        return json.loads(_storage().read_path(path))
    except Exception:  # noqa: BLE001 - any storage trouble is a miss
        return None


def lookup_defaults(
    model: ModelConfig, tag: str, meta_param_dict: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the kept answer or None, the identity it is kept under). The {} answer is read first:
    its meta parameters say what the request resolves to."""
    base_answer = _read_cached(cache_path(model, tag, {}))
    identity = defaults_identity(meta_param_dict, meta_values(base_answer))
    if not identity:
        return base_answer, identity
    return _read_cached(cache_path(model, tag, identity)), identity


def answer(call, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The function's dict plus meta.task_times and status (and traceback on failure)."""
    if not call.ok:
        return answer_fail(call.error)
    return answer_success(result if result is not None else call.result, call.seconds)


def failed(exc: Exception) -> dict[str, Any]:
    """A light call that broke before or around the model: a FAIL answer, never an exception."""
    return answer_fail(f"{type(exc).__name__}: {exc}")


def checked(function: str, result: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The model's answer if it has the contract's shape; else a ValueError saying what is wrong
    (a string or a dict without these keys would otherwise reach the web app as a SUCCESS)."""
    if not isinstance(result, dict):
        raise ValueError(
            f"{function} must return a dict with {list(keys)}, got {type(result).__name__}"
        )
    missing = [key for key in keys if key not in result]
    if missing:
        raise ValueError(f"{function} returned a dict without {missing}: it needs {list(keys)}")
    return result


def warm_call(model: ModelConfig, entry: PublishedTag, function: str, args: list[Any]):
    """The call on the model's warm process (or container: the tier's `warm_model`), restarted
    first if what it was started with (environment and secrets, bounds, network, image) has
    changed since."""
    env = model_env(model)
    fingerprint = _fingerprint(env, model.internet, call_bounds(model), entry)
    limit = min(LIGHT_CALL_LIMIT, model.time_limit)
    starting = _named_lock(_model_locks, model.slug)  # one start at a time per model, not in all
    if not starting.acquire(timeout=limit):  # the task worker's threads are few: bounded wait
        raise TimeoutError(
            f"{model.owner}/{model.title}'s warm process is still starting after {limit:g}s"
            " (an image pull or a model import that hangs?): see the inputs server's log"
        )
    try:
        warm = _warm_for(
            (model.slug, entry.image or entry.python),
            fingerprint,
            lambda: get_tier(entry.tier).warm_model(model, entry, env, fingerprint),
        )
    finally:
        starting.release()
    return warm.call(function, args, timeout=limit)


def _warm_for(key: tuple[str, str], fingerprint: str, start: Callable[[], WarmCaller]):
    """The model's warm caller for `key`, started if it has none with this fingerprint.

    Starting one may pull an image (minutes, if a registry hangs) and stopping one removes a
    container: done outside the table's lock, so one slow model never holds up the light calls
    of every other model (the caller holds that model's own lock). One warm caller per model:
    the tag asked for now replaces the others (after a promote, the old tag's would otherwise
    hold its memory for ever)."""
    with _warm_lock:
        warm = _warm.get(key)
        if warm is not None and warm.fingerprint == fingerprint:
            return warm
        replaced = [_warm.pop(other) for other in list(_warm) if other[0] == key[0]]
        generation = _warm_generation
    for old in replaced:
        old.stop()
    warm = start()
    with _warm_lock:
        if generation == _warm_generation:
            _warm[key] = warm
            return warm
    warm.stop()
    raise RuntimeError("the inputs server stopped its warm models while this one started")


def stop_warm() -> None:
    """Stop every warm process and container (the inputs server is stopping), side by side:
    removing a container takes the engine a second or more on a loaded machine, and the
    stack gives a stopping server 15 s before SIGKILL. One still starting is stopped by its
    starter (_warm_for)."""
    global _warm_generation
    with _warm_lock:
        warm = list(_warm.values())
        _warm.clear()
        _warm_generation += 1
    if warm:
        with ThreadPoolExecutor(max_workers=min(8, len(warm))) as pool:
            list(pool.map(lambda model: model.stop(), warm))


def _named_lock(table: dict[Any, threading.Lock], name: Any) -> threading.Lock:
    """The lock of `name` in `table`, made on first use."""
    with _locks_lock:
        return table.setdefault(name, threading.Lock())


def _fingerprint(env: dict[str, str], internet: bool, bounds: Bounds, entry: PublishedTag) -> str:
    """A digest, not the values: the secrets it covers are not kept in memory twice."""
    text = json.dumps([sorted(env.items()), internet, bounds.describe(), entry.tier])
    return hashlib.sha256(text.encode()).hexdigest()


def _resolve(owner: str, title: str, tag: str | None) -> tuple[ModelConfig, PublishedTag]:
    model = ModelConfig.for_model(owner, title)
    return model, model.published(tag)


# ---- tasks, run by the inputs task worker ----------------------------------


@task(name="inputs-version", persist_result=True)
def version_task(owner: str, title: str, tag: str | None = None) -> dict[str, Any]:
    """Any failure is a FAIL answer; the answer is strict JSON (see payloads.sendable)."""
    try:
        model, entry = _resolve(owner, title, tag)
        call = warm_call(model, entry, "get_version", [])
        version = {"version": str(call.result)} if call.ok else None
        return sendable(scrubber_for(model)(answer(call, version)))
    except Exception as exc:  # noqa: BLE001 - the caller gets an answer, not a failed task
        return failed(exc)


@task(name="inputs-defaults", persist_result=True)
def defaults_task(
    owner: str,
    title: str,
    meta_param_dict: dict[str, Any],
    tag: str | None = None,
    warm: bool = False,
) -> dict[str, Any]:
    """One model call per (model, tag) at a time in this worker: a task queued behind the
    same request (a web app's retry) finds the answer kept and calls nothing. `warm` (publish
    and start-up warming) calls the model even so: the point is its process, started."""
    try:
        model, entry = _resolve(owner, title, tag)
        with _defaults_lock(model.slug, entry.tag):
            known, identity = lookup_defaults(model, entry.tag, meta_param_dict)
            if known is not None and not warm:
                return known
            result = _call_defaults(model, entry, meta_param_dict)
            if known is not None and same_answer(known, result):
                return result  # a warming call: the kept entry stays as it was
            if result["status"] == "SUCCESS":
                _keep(cache_path(model, entry.tag, identity), result)
            return result
    except Exception as exc:  # noqa: BLE001 - the caller gets an answer, not a failed task
        return failed(exc)


def same_answer(known: dict[str, Any], result: dict[str, Any]) -> bool:
    """The model answered what was kept (its timing aside): a warming call then leaves the
    entry as it was, so callers that read it twice see one answer."""
    strip = lambda answer: {k: v for k, v in answer.items() if k != "meta"}  # noqa: E731
    return strip(known) == strip(result)


def _call_defaults(
    model: ModelConfig, entry: PublishedTag, meta_param_dict: dict[str, Any]
) -> dict[str, Any]:
    call = warm_call(model, entry, "get_inputs", [meta_param_dict])
    if call.ok:
        checked("get_inputs", call.result, ("meta_parameters", "model_parameters"))
    return sendable(scrubber_for(model)(answer(call)))


def _keep(path: str, result: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):  # an unwritable cache costs speed, not the answer
        _storage().write_path(path, json.dumps(result).encode())


def _defaults_lock(model_slug: str, tag: str) -> threading.Lock:
    """The model's calls queue on its one warm process anyway (WarmModel.lock); holding this
    around the cache check as well is what merges identical requests."""
    return _named_lock(_defaults_locks, (model_slug, tag))


@task(name="inputs-parse", persist_result=True)
def parse_task(
    owner: str,
    title: str,
    task_id: str,
    meta_param_dict: dict[str, Any],
    adjustment: dict[str, Any],
    tag: str | None = None,
    errors_warnings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """validate_inputs, then PUT to /inputs/api/ in the outputs envelope: always exactly one PUT.
    `errors_warnings` last and optional: tasks submitted before it existed still run."""
    try:
        payload = parse_payload(
            owner, title, task_id, meta_param_dict, adjustment, tag, errors_warnings
        )
    except Exception as exc:  # noqa: BLE001 - a parse that breaks is still answered
        payload = parse_fail(task_id, f"{type(exc).__name__}: {exc}")
    payload["delivery"] = deliver(INPUTS_PATH, payload, parse_webapp(owner, title, tag))
    return payload


def parse_webapp(owner: str, title: str, tag: str | None) -> str | None:
    """The model's own web app (a v1 web app's project); None (the cluster's) for a model or
    tag the registry does not know: its FAIL has no other web app to go to."""
    try:
        return _resolve(owner, title, tag)[0].webapp
    except LookupError:
        return None


def parse_payload(
    owner: str,
    title: str,
    task_id: str,
    meta_param_dict: dict[str, Any],
    adjustment: dict[str, Any],
    tag: str | None,
    errors_warnings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """validate_inputs' answer in the envelope; inputs nested past CS_LIMITS_JSON_DEPTH raise
    TooDeep naming them (parse_task makes it the one FAIL), before a model sees them."""
    check_inputs(meta_param_dict, adjustment, get_settings().limits.json_depth)
    model, entry = _resolve(owner, title, tag)
    inputs = warm_call(model, entry, "get_inputs", [meta_param_dict])
    if not inputs.ok:
        return sendable(scrubber_for(model)(parse_fail(task_id, inputs.error)))
    sections = checked("get_inputs", inputs.result, ("model_parameters",))["model_parameters"]
    given = errors_warnings_for(sections, errors_warnings)
    call = warm_call(model, entry, "validate_inputs", [meta_param_dict, adjustment, given])
    if call.ok:
        outputs = checked("validate_inputs", call.result, ("errors_warnings",))
        payload = parse_success(task_id, outputs, call.seconds)
    else:
        payload = parse_fail(task_id, call.error, call.seconds)
    return sendable(scrubber_for(model)(payload))


def errors_warnings_for(
    sections: dict[str, Any], from_webapp: dict[str, Any] | None
) -> dict[str, Any]:
    """What validate_inputs gets: the web app's errors_warnings as it sent them (its "GUI" and
    "API" sections carry what its own parser found, e.g. an unknown section; C/S's worker passed
    them through and the web app marks a parse with errors INVALID), plus an empty entry for each
    model section it lacks (models index errors_warnings[section] without checking)."""
    given = dict(from_webapp or {})
    for section in sections:
        given.setdefault(section, {"errors": {}, "warnings": {}})
    return given


# ---- routing: one shared worker on the embedded tier, one per model on container tiers ----


def for_model(background_task: Task, owner: str, title: str) -> Task:
    """The task under a key of its own model, so only that model's inputs server picks it up.

    A task worker subscribes by task key; on the container tiers each model's
    inputs server runs in the model's image and must not take another model's calls.
    """
    fn, suffix = background_task.fn, slug(owner, title)

    @functools.wraps(fn)
    def routed(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    # Prefect derives the key from the function's name (and the worker re-derives it).
    routed.__qualname__ = f"{fn.__name__}__{suffix}"
    return task(name=f"{background_task.name}-{suffix}", persist_result=True)(routed)


def route(background_task: Task, entry: PublishedTag, owner: str, title: str) -> Task:
    """The shared worker starts local venvs' and Docker images' warm models itself; on
    Kubernetes each model's inputs server serves it alone (tiers/base.py)."""
    if get_tier(entry.tier).inputs_on_shared_worker:
        return background_task
    return for_model(background_task, owner, title)


# ---- the caller's side: what a web app (or the CLI) calls -------------------


def _run(background_task, *args: Any, timeout: float = LIGHT_CALL_LIMIT + 10) -> dict[str, Any]:
    with task_storage():
        future = background_task.delay(*args)
        wait_started(future, timeout)
        if future.state.is_completed():
            return future.result()
        if not future.state.is_final():
            raise TimeoutError(
                f"no answer within {timeout:g}s: is the inputs worker of this model running?"
                " (`prefect-cs stack start` locally; the model's inputs server on container tiers)"
            )
        return answer_fail(future.state.message)  # may be empty: answer_fail never sends that


def wait_started(future: Any, timeout: float) -> None:
    """future.wait, again when Prefect read the task run before its first state was set
    (a race of a busy server: "has no state which means it hasn't started yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.wait(timeout=max(0.1, deadline - time.monotonic()))
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def get_version(owner: str, title: str, tag: str | None = None) -> dict[str, Any]:
    _, entry = _resolve(owner, title, tag)
    return _run(route(version_task, entry, owner, title), owner, title, entry.tag)


def get_defaults(
    owner: str, title: str, meta_param_dict: dict[str, Any] | None = None, tag: str | None = None
) -> dict[str, Any]:
    """Cached per model, tag and meta parameters: a hit is one storage read, no task round trip."""
    return defaults_of(*_resolve(owner, title, tag), meta_param_dict or {})


def defaults_of(
    model: ModelConfig, entry: PublishedTag, meta_param_dict: dict[str, Any]
) -> dict[str, Any]:
    """get_defaults for a model already resolved (the cluster API keeps its configs)."""
    known, _ = lookup_defaults(model, entry.tag, meta_param_dict)
    if known is not None:
        return known
    task = route(defaults_task, entry, model.owner, model.title)
    return _run(task, model.owner, model.title, meta_param_dict, entry.tag)


def prewarm(model: ModelConfig, entry: PublishedTag) -> None:
    """Ask the model's inputs server for its default inputs, without waiting: it starts the
    model's process and caches the answer, so the web app's first call after a deploy is
    neither a cold import nor a model call (the server takes it whenever it runs)."""
    with task_storage():
        route(defaults_task, entry, model.owner, model.title).delay(
            model.owner, model.title, {}, entry.tag, warm=True
        )


def submit_parse(
    entry: PublishedTag,
    owner: str,
    title: str,
    task_id: str,
    meta_param_dict: dict[str, Any],
    adjustment: dict[str, Any],
    errors_warnings: dict[str, Any] | None = None,
) -> None:
    """The parse task, submitted without waiting (its PUT /inputs/api/ comes later)."""
    with task_storage():
        route(parse_task, entry, owner, title).delay(
            owner, title, task_id, meta_param_dict, adjustment, entry.tag, errors_warnings
        )


def parse(
    owner: str,
    title: str,
    task_id: str,
    meta_param_dict: dict[str, Any],
    adjustment: dict[str, Any],
    tag: str | None = None,
    errors_warnings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    check_task_id(task_id)  # the web app's ids are UUIDs; nothing else names a kept file
    _, entry = _resolve(owner, title, tag)
    task = route(parse_task, entry, owner, title)
    args = (meta_param_dict, adjustment, entry.tag, errors_warnings)
    return _run(task, owner, title, task_id, *args)
