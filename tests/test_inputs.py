"""version, defaults and parse through real Prefect background tasks and a real task worker."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect_cs.flows import inputs
from prefect_cs.services import inputs_server
from prefect_cs.services.stack_parts import inputs_worker


def test_version(misbehaving, task_worker):
    answer = inputs.get_version("tests", "Misbehaving")
    assert answer["status"] == "SUCCESS"
    published = inputs.ModelConfig.for_model("tests", "Misbehaving").published("v1")
    assert answer["version"] == published.version
    assert len(answer["meta"]["task_times"]) == 1


def test_defaults_are_cached_per_meta_parameters(paramtools, task_worker):
    first = inputs.get_defaults("tests", "ParamTools", {})
    assert first["status"] == "SUCCESS"
    assert set(first) >= {"meta_parameters", "model_parameters", "meta"}
    started = time.perf_counter()
    cached = inputs.get_defaults("tests", "ParamTools", {})
    assert cached == first
    assert time.perf_counter() - started < 2  # a storage read, not a task run
    model = inputs.ModelConfig.for_model("tests", "ParamTools")
    path = inputs.cache_path(model, "v1", {})
    assert inputs._storage().read_path(path)


def test_identical_defaults_requests_make_one_model_call(misbehaving, task_worker):
    """Two callers' tasks for the same new meta parameters at once: the worker runs the model
    for the first, and the second, queued behind it, is answered from what it kept."""
    from concurrent.futures import ThreadPoolExecutor

    # 1 s: long enough for both tasks to be in flight, short against the model's 8 s limit
    # on a loaded machine (its warm process may be importing the model first)
    meta = {"behavior": "slow", "seconds": 1, "caller": str(uuid.uuid4())}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda _: inputs.get_defaults("tests", "Misbehaving", meta), range(2))
        )
    assert [a["status"] for a in answers] == ["SUCCESS", "SUCCESS"], answers
    assert answers[0]["meta_parameters"]["call"] == answers[1]["meta_parameters"]["call"]


def test_the_resolved_meta_parameters_are_the_defaults_entry(paramtools, task_worker):
    """{} and what it resolves to (C/S's second request) are one cache entry."""
    first = inputs.get_defaults("tests", "ParamTools", {})
    specs = first["meta_parameters"]  # ParamTools' dump: a "schema" entry, then parameters
    resolved = {name: spec["value"] for name, spec in specs.items() if name != "schema"}
    assert inputs.get_defaults("tests", "ParamTools", resolved) == first
    plain = {name: value[0]["value"] for name, value in resolved.items()}
    assert inputs.get_defaults("tests", "ParamTools", plain) == first


def test_warming_calls_the_model_even_when_its_defaults_are_kept(misbehaving, task_worker):
    """Publish and start-up warming are for the model's process: a kept answer must not
    stop them from starting it (a parse after a restart would be a cold import)."""
    kept = inputs.get_defaults("tests", "Misbehaving", {})
    try:
        assert inputs.defaults_task.fn("tests", "Misbehaving", {}, None) == kept
        warmed = inputs.defaults_task.fn("tests", "Misbehaving", {}, None, warm=True)
        assert warmed["status"] == "SUCCESS"
        assert warmed["meta"] != kept["meta"]  # a model call of its own, timed afresh
    finally:
        inputs.stop_warm()


def test_parse_puts_to_inputs_api(paramtools, task_worker, webapp):
    task_id = str(uuid.uuid4())
    defaults = inputs.get_defaults("tests", "ParamTools", {})
    section = next(iter(defaults["model_parameters"]))
    param = next(iter(defaults["model_parameters"][section]))
    bad = {section: {param: [{"value": "not-a-number"}]}}
    answer = inputs.parse("tests", "ParamTools", task_id, {}, bad)
    assert answer["status"] == "SUCCESS"
    errors = answer["outputs"]["errors_warnings"][section]["errors"]
    assert param in errors
    puts = [r.body for r in webapp.accepted("/inputs/api/") if r.body["task_id"] == task_id]
    assert len(puts) == 1
    assert set(puts[0]) == {"task_id", "status", "meta", "outputs", "version"}
    assert puts[0]["outputs"]["errors_warnings"][section]["errors"] == errors


@pytest.fixture
def per_model_worker(misbehaving):
    """An inputs server for one model only, as each model's image runs on the container tiers."""
    from prefect_cs.services.supervisor import Background

    shared = inputs_worker()
    bg = Background(
        "inputs-worker-misbehaving",
        shared.argv,
        {**shared.env, "CS_INPUTS_MODEL": "tests/Misbehaving"},
    )
    bg.start()
    yield bg
    bg.stop()


def test_container_tier_calls_reach_only_their_models_server(per_model_worker, paramtools):
    mine = inputs.for_model(inputs.version_task, "tests", "Misbehaving")
    assert "__tests-misbehaving" in mine.task_key
    answer = inputs._run(mine, "tests", "Misbehaving", "v1", timeout=60)
    assert answer["status"] == "SUCCESS" and answer["version"]

    other = inputs.for_model(inputs.version_task, "tests", "ParamTools")
    with pytest.raises(TimeoutError, match="inputs worker of this model"):
        inputs._run(other, "tests", "ParamTools", "v1", timeout=5)


def test_container_tier_entries_are_routed_per_model():
    from prefect_cs.blocks.model_config import PublishedTag

    local = PublishedTag(tag="v1", tier="local", python="/x/bin/python")
    image = PublishedTag(
        tag="v1", tier="kubernetes", python="/opt/cs/model/bin/python", image="r/x:v1"
    )
    assert inputs.route(inputs.parse_task, local, "a", "b") is inputs.parse_task
    docker = image.model_copy(update={"tier": "docker"})  # warm containers on the shared worker
    assert inputs.route(inputs.parse_task, docker, "a", "b") is inputs.parse_task
    assert "__a-b" in inputs.route(inputs.parse_task, image, "a", "b").task_key
    with pytest.raises(ValueError, match="invalid owner"):
        inputs_server.served_tasks("bad owner/x")


# ---- warming: the first call after a deploy or a restart is neither cold nor a model call ----


def cached_defaults_file(owner: str, title: str, tag: str):
    from pathlib import Path

    model = inputs.ModelConfig.for_model(owner, title)
    return Path(inputs._storage().basepath) / inputs.cache_path(model, tag, {})


def test_a_promote_warms_the_new_tags_default_inputs(paramtools, task_worker):
    from prefect_cs.testing.models import publish_model

    cached = cached_defaults_file("tests", "ParamTools", "v1")
    deadline = time.monotonic() + 90  # the worker's own start-up warming must not be what we see
    while "warming at start done" not in task_worker.log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the inputs worker never finished warming at start"
        time.sleep(0.5)
    cached.unlink(missing_ok=True)
    assert publish_model("tests", "ParamTools", "v1", "promote").is_completed()  # a rollback
    deadline = time.monotonic() + 60
    while not cached.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cached.exists(), "the promote did not warm the inputs: no defaults cached for v1"
    assert inputs.get_defaults("tests", "ParamTools", {})["status"] == "SUCCESS"


def test_the_inputs_server_warms_what_it_serves_when_it_starts(misbehaving, platform):
    from prefect_cs.services.supervisor import Background

    cached = cached_defaults_file("tests", "Misbehaving", "v1")
    cached.unlink(missing_ok=True)
    base = inputs_worker()
    worker = Background("inputs-warm-test", base.argv, base.env)
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while not cached.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = worker.log_file.read_text(errors="replace")
    finally:
        worker.stop()
    assert cached.exists(), f"not warmed at start; the server's log:\n{log[-3000:]}"
    assert "warmed tests/Misbehaving: SUCCESS" in log
    # Prefect's collections are imported before the warming thread and the task worker exist:
    # the two importing them at once hung a server for good (core/blocks.load_collections_first)
    loaded = log.find("Prefect collections loaded before any thread: ")
    assert loaded != -1, log[-3000:]
    assert "prefect_docker" in log[loaded:].splitlines()[0]
    assert loaded < log.find("Subscribing to runs of task(s)")
    assert loaded < log.find("warmed tests/Misbehaving")


def test_a_warm_process_outlives_the_thread_that_started_it(misbehaving):
    """Task workers answer on short-lived threads, and start-up warming runs on its own: the
    model's warm process must not die when the thread that started it ends (it did, with
    SIGKILL, in the middle of the next user's call)."""
    import threading

    model, entry = inputs._resolve("tests", "Misbehaving", None)
    started = threading.Thread(target=inputs.warm_call, args=(model, entry, "get_version", []))
    started.start()
    started.join()
    try:
        (warm,) = [w for key, w in inputs._warm.items() if key[0] == model.slug]
        first = warm.proc.pid
        time.sleep(1)  # the kernel's parent-death signal is immediate; leave it time anyway
        assert warm.proc.poll() is None, "the warm process died with its starting thread"
        call = inputs.warm_call(model, entry, "get_version", [])
        assert call.ok, call.error
        assert warm.proc is not None and warm.proc.pid == first  # the same process answered
    finally:
        inputs.stop_warm()


def test_a_model_whose_image_pull_hangs_holds_up_no_other_models_calls(misbehaving, monkeypatch):
    """A Docker-tier model's registry that accepts connections and never answers: its warm
    start hangs in `docker pull` (for as long as the registry likes). Another model's light
    calls must go on meanwhile; they queued behind one table lock for the whole pull before,
    and an inputs page of every model timed out with it."""
    import contextlib
    import socket
    import threading

    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.core.errors import StepFailed
    from prefect_cs.registry.configs import register
    from prefect_cs.tiers.docker import MODEL_PYTHON

    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    silent.settimeout(60)
    port = silent.getsockname()[1]
    monkeypatch.setenv("CS_REGISTRY", f"127.0.0.1:{port}")
    monkeypatch.delenv("CS_REGISTRY_BLOCK", raising=False)
    stalled = register(
        ModelConfig(
            owner="tests",
            title="Stalled-Docker",
            repo_url="https://example.invalid/s.git",
            time_limit=5,
            expected_task_time=1,
        )
    )
    stalled_entry = PublishedTag(
        tag="v1", tier="docker", python=MODEL_PYTHON, image=f"127.0.0.1:{port}/tests_stalled:v1"
    )
    stalled.record(stalled_entry)
    stalled.save_model()

    def pull() -> None:
        with contextlib.suppress(StepFailed):  # the pull fails once the registry is closed
            inputs.warm_call(stalled, stalled_entry, "get_version", [])

    pulling = threading.Thread(target=pull, daemon=True)
    held: list[socket.socket] = []
    try:
        pulling.start()
        held.append(silent.accept()[0])  # the engine reached the registry: the pull is in flight
        model, entry = inputs._resolve("tests", "Misbehaving", None)
        answered: list = []

        def other_model() -> None:
            call = inputs.warm_call(model, entry, "get_version", [])
            answered.append((call, pulling.is_alive()))

        other = threading.Thread(target=other_model, daemon=True)
        other.start()
        other.join(timeout=120)
        assert answered, "another model's call was not answered"
        call, while_pulling = answered[0]
        assert call.ok, call.error
        assert while_pulling, "another model's call waited until the hanging pull gave up"
        # the stalled model's own next call waits a bounded time (its limit), not the pull's
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="still starting after 5s"):
            inputs.warm_call(stalled, stalled_entry, "get_version", [])
        assert time.monotonic() - started < 30
    finally:
        for conn in held:
            conn.close()
        silent.close()  # the pull fails now
        pulling.join(timeout=120)
        inputs.stop_warm()
        ModelConfig.delete(stalled.slug, _sync=True)  # later inputs servers would warm it
