"""A model call in a container of the model's own image (runtime/container.py), for real.

The image is the attacker app on the local base image, built the way a model's build could
leave it: its own `.pth` and `sitecustomize.py` in the model venv, a runner of its own where
the old images kept the platform's, and no platform venv at all. The calls must work (the
platform's runner is bound in from outside), and the attacks from inside must get nothing:
the flow's environment, any network, the image's files, more memory or processes than the
bounds give.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.container import call_in_image
from prefect_cs.testing.docker_tier import (
    BASE_IMAGE,
    container_names_and_ids,
    containers,
    ensure_docker,
)
from prefect_cs.testing.models import EXAMPLES

ATTACKER = EXAMPLES / "attacker-app" / "cs-config" / "cs_config"
MODEL_PYTHON = "/opt/cs/model/bin/python"
PLANTED = "cs-planted-ran"
DOCKERFILE = f"""
FROM {BASE_IMAGE}
RUN python3 -m venv /opt/cs/model
COPY cs_config /opt/cs/model/lib/python3.11/site-packages/cs_config
# What a model's root build step may leave: code that runs in every interpreter of the image,
# and a runner of its own where the old images kept the platform's.
RUN echo 'import os; open("/tmp/{PLANTED}", "w") if os.access("/tmp", os.W_OK) else None' \\
      > /opt/cs/model/lib/python3.11/site-packages/zz-planted.pth \\
 && mkdir -p /opt/cs/model/cs-runtime \\
 && echo 'raise SystemExit("the image runner ran")' > /opt/cs/model/cs-runtime/child.py
"""


def build_context() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(str(ATTACKER), arcname="cs_config")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client():
    import docker

    ensure_docker()
    return docker.from_env(timeout=600)


@pytest.fixture(scope="module")
def image(client):
    import docker.errors

    tag = f"cs-tests-container-call:{uuid.uuid4().hex[:8]}"
    for attempt in (1, 2):  # the engine has failed a build once under a concurrent one here
        try:
            client.images.build(
                fileobj=io.BytesIO(build_context()), custom_context=True, tag=tag, rm=True
            )
            break
        except (docker.errors.BuildError, docker.errors.APIError):
            if attempt == 2:
                raise
    yield tag
    client.images.remove(tag, force=True)


def call(client, image, function, args, bounds=None, **kwargs):
    bounds = bounds or Bounds(memory_mib=512, pids=128, cpus=1.0, disk_mib=64)
    return call_in_image(
        client, image, MODEL_PYTHON, function, args, timeout=120, bounds=bounds, **kwargs
    )


def test_the_platforms_runner_answers_in_an_image_without_platform_code(client, image):
    """get_version works though the image's own runner would exit and it has no platform venv:
    the runner that ran is the platform's, bound in read-only."""
    result = call(client, image, "get_version", [])
    assert result.ok, result.error
    assert result.result == "1.0.0"


def test_attacks_from_inside_the_container_get_nothing(client, image):
    """The attacker's probes (the flow's environment, the API, Redis, the web app, the files,
    writes outside its folder, nested namespaces) from run_model in its container."""
    targets = {"api": "http://127.0.0.1:4200/api", "webapp": "http://127.0.0.1:8765"}
    result = call(client, image, "run_model", [{"targets": targets}, {}])
    assert result.ok, result.error
    report = json.loads(result.result["downloadable"][0]["data"])
    assert report["ran"] == 17, report  # every probe ran: a broken one cannot pass
    assert report["uid"] == 10001
    got = {k: v for k, v in report["probes"].items() if v["outcome"] == "GOT"}
    assert got == {}, got


def test_the_memory_bound_holds_across_processes(client, image):
    meta = {"bound_attack": "memory_hog", "args": {"children": 4, "mib": 200, "shm_mib": 0}}
    result = call(client, image, "run_model", [meta, {}], bounds=Bounds(memory_mib=256, pids=64))
    assert not result.ok
    assert "memory limit of 256 MiB" in result.error, result.error


def test_the_pids_bound_stops_a_fork_bomb(client, image):
    meta = {"bound_attack": "fork_bomb", "args": {"limit": 500}}
    result = call(client, image, "run_model", [meta, {}], bounds=Bounds(memory_mib=512, pids=64))
    assert result.ok, result.error
    figures = json.loads(result.result["renderable"][0]["data"])
    assert figures["stopped_by"] is not None and figures["processes"] < 64, figures


def test_the_work_folder_is_a_bounded_tmpfs(client, image):
    meta = {"bound_attack": "disk_fill", "args": {"mib": 500}}
    result = call(
        client, image, "run_model", [meta, {}], bounds=Bounds(memory_mib=1024, disk_mib=32)
    )
    assert result.ok, result.error
    figures = json.loads(result.result["renderable"][0]["data"])
    assert figures["stopped_by"] is not None and figures["written_mib"] <= 32, figures


def test_a_container_outliving_its_time_limit_is_stopped_and_removed(client, image):
    functions_hang = {
        "bound_attack": "memory_hog",
        "args": {"children": 1, "mib": 1, "shm_mib": 0, "hold": 600},
    }
    mine = {"cs-tests-call": uuid.uuid4().hex}  # only this call's: other tests run beside it
    result = call_in_image(
        client,
        image,
        MODEL_PYTHON,
        "run_model",
        [functions_hang, {}],
        timeout=3,
        bounds=Bounds(memory_mib=256, pids=64),
        labels=mine,
    )
    assert not result.ok and "time limit of 3 seconds" in result.error, result.error
    label = "cs-tests-call=" + mine["cs-tests-call"]
    assert not containers(label)


def test_orphaned_call_containers_are_swept_after_their_deadline(client, image):
    """A flow killed from outside never removes its call's container: the next call's sweep
    (and the lost-run watcher's) removes those past their deadline label, and only those."""
    from prefect_cs.runtime.container import CALL_LABEL, sweep_expired

    argv = ["sleep", "600"]
    late = client.containers.run(image, argv, detach=True, labels={CALL_LABEL: "1"})
    alive = client.containers.run(image, argv, detach=True, labels={CALL_LABEL: "99999999999"})
    try:
        removed = sweep_expired(client)  # another test's call may have swept `late` first
        assert alive.id not in removed
        ids = container_names_and_ids()
        assert late.id not in ids and alive.id in ids
    finally:
        for container in (late, alive):
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already swept
                pass


def test_the_kernel_bills_the_containers_whole_tree(client, image, monkeypatch):
    """CPU time and peak memory from the counting group the engine nested the call's container
    under, read after the container is gone; the groups go with it (this call's: the other
    xdist worker's calls make groups of their own meanwhile)."""
    import subprocess

    from prefect_cs.runtime import container as container_module

    made: list[str] = []

    def recording(name: str):
        group = real(name)
        if group is not None:
            made.append(group[1])
        return group

    real = container_module.engine_group
    monkeypatch.setattr(container_module, "engine_group", recording)
    hog = {
        "bound_attack": "memory_hog",
        "args": {"children": 2, "mib": 100, "shm_mib": 0, "hold": 1},
    }
    result = call(client, image, "run_model", [hog, {}])
    assert result.ok, result.error
    assert result.usage is not None and result.usage.peak_memory_mib >= 200, result.usage
    assert result.usage.cpu_seconds > 0
    assert len(made) == 1, made
    left = subprocess.run(
        ["find", "/sys/fs/cgroup", "-type", "d", "-path", f"*{made[0]}*"],
        capture_output=True,
        text=True,
    ).stdout
    assert left == "", left


def early(client, image, timeout: float = 120):
    from prefect_cs.runtime.container import start_early

    bounds = Bounds(memory_mib=512, pids=128, cpus=1.0, disk_mib=64)
    return start_early(client, image, MODEL_PYTHON, timeout=timeout, bounds=bounds)


def test_a_call_started_early_answers_confined_billed_and_removed(client, image):
    """The container started ahead of its request (runtime/container.EarlyCall) is running,
    the model imported, before the flow asks; then it answers as a call_in_image container
    would: the same confinement (the attacker's probes get nothing), billed, removed."""
    import time

    started = early(client, image)
    try:
        container = started.started.result(timeout=120)
        deadline = time.monotonic() + 120
        while container.status != "running":  # up and waiting: the head start is real
            assert time.monotonic() < deadline, container.status
            time.sleep(0.1)
            container.reload()
        assert not (started.exchange / "request.json").exists()
        targets = {"api": "http://127.0.0.1:4200/api", "webapp": "http://127.0.0.1:8765"}
        result = started.call("run_model", [{"targets": targets}, {}])
        assert result is not None and result.ok, result and result.error
        report = json.loads(result.result["downloadable"][0]["data"])
        assert report["ran"] == 17 and report["uid"] == 10001, report
        got = {k: v for k, v in report["probes"].items() if v["outcome"] == "GOT"}
        assert got == {}, got
        assert result.usage is not None and result.usage.cpu_seconds > 0, result.usage
        assert started.name not in container_names_and_ids()
    finally:
        started.close()
    assert not started.exchange.exists()


def test_a_call_started_early_and_never_asked_leaves_nothing(client, image):
    """A flow that fails before its call (inputs gone) closes the head start at once, its
    start maybe still in flight: no container is left behind, and no exchange folder."""
    from concurrent.futures import wait

    started = early(client, image)
    started.close()
    wait([started.started], timeout=120)  # a start close() did not wait for would land now
    assert started.name not in container_names_and_ids()
    assert not started.exchange.exists()


def test_a_call_started_early_keeps_its_time_limit(client, image):
    """The time limit runs from the request, and holds: an overrun is stopped and reported."""
    hang = {"bound_attack": "memory_hog", "args": {"children": 1, "mib": 1, "shm_mib": 0}}
    hang["args"]["hold"] = 600
    started = early(client, image, timeout=3)
    try:
        result = started.call("run_model", [hang, {}])
    finally:
        started.close()
    assert result is not None and not result.ok
    assert "time limit of 3 seconds" in result.error, result.error
    assert started.name not in container_names_and_ids()


def test_links_the_model_plants_before_its_request_never_redirect_the_write(
    client, image, tmp_path
):
    """The container started early runs model code before the request exists, as uid 10001 in
    a folder it can write: it plants links (inside the container, as the model's uid) under
    the names a request could be written to, pointing at a file of the host. The flow, root,
    must not write through them."""
    import time

    victim = tmp_path / "platform-file"
    victim.write_text("untouched")
    started = early(client, image)
    try:
        container = started.started.result(timeout=120)
        deadline = time.monotonic() + 120
        while container.status != "running":
            assert time.monotonic() < deadline, container.status
            time.sleep(0.1)
            container.reload()
        names = ["request.part", ".request.json.part", "request.json.part"]
        for name in names:
            planted = container.exec_run(["ln", "-s", str(victim), f"/cs/exchange/{name}"])
            assert planted.exit_code == 0, planted.output
        assert all((started.exchange / n).is_symlink() for n in names), "the attack ran"
        result = started.call("get_version", [])
        assert result is not None and result.ok, result and result.error
    finally:
        started.close()
    assert victim.read_text() == "untouched"
