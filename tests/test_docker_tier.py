"""The Docker tier end to end on real parts: dockerd, a registry on 127.0.0.1:5000, a base image
made with debootstrap, a real process worker on the tier's pool, the web app stand-in.

Publish builds, tests and pushes an image; the flow runs on the worker's host and
each model call is a confined container of the image, started and removed by the flow. The
re-publish comes last because it moves the model's promoted tag; each test still stands alone (`-k`
runs any one of them).
"""

from __future__ import annotations

import json
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.deployments.submit import submit_simulation
from prefect_cs.services.stack_parts import docker_worker
from prefect_cs.testing.docker_tier import (
    REGISTRY,
    containers,
    docker_tier,
    ensure_docker,
    layer_ids,
    registry_auth,
    registry_settings,
    registry_tags,
    wait_for_container,
)
from prefect_cs.testing.models import (
    add_tag,
    make_repo,
    publish_model,
    register_model,
    sample_app_constant,
)
from prefect_cs.tiers.docker import MODEL_PYTHON, image_repository

OWNER, TITLE = "tests", "Misbehaving-Docker"
REPOSITORY = "tests_misbehaving-docker"
SECRET_VALUE = f"tok-{uuid.uuid4().hex}"
FAIL_KEYS = {"task_id", "status", "meta", "traceback"}


def behave(behavior: str) -> dict:
    return {"control": {"behavior": [{"value": behavior}]}}


@pytest.fixture(scope="module")
def docker_ready(platform, tmp_path_factory):
    import os

    ensure_docker()
    settings = registry_settings()
    os.environ.update(settings)
    yield
    for key in settings:
        os.environ.pop(key, None)


@pytest.fixture(scope="module")
def docker_repo(docker_ready, repos) -> Path:
    """The misbehaving app on the docker tier, with a declared secret, published at v1."""
    from prefect_cs.security.secrets import PrefectSecretsBackend

    repo = make_repo("misbehaving-app", repos / "misbehaving-docker")
    register_model(
        OWNER,
        TITLE,
        repo,
        repo_tag="v1",
        time_limit=8,
        expected_task_time=1,
        memory="512Mi",
        secrets=["MODEL_TOKEN"],
    )
    PrefectSecretsBackend(f"{OWNER}/{TITLE}").set("MODEL_TOKEN", SECRET_VALUE)
    with docker_tier():
        state = publish_model(OWNER, TITLE)
    assert state.is_completed(), state.message
    return repo


@pytest.fixture(scope="module")
def worker(docker_repo):
    bg = docker_worker()
    bg.start()
    yield bg
    bg.stop()


def deployment(title: str = TITLE):
    from prefect.client.orchestration import get_client

    model = ModelConfig.for_model(OWNER, title)
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"simulate/{model.slug}")


def only_put(webapp, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        puts = [r for r in webapp.accepted("/outputs/api/") if r.body.get("task_id") == task_id]
        if puts:
            break
        time.sleep(0.2)
    assert len(puts) == 1, f"expected exactly one PUT for {task_id}, got {len(puts)}"
    assert puts[0].headers["Authorization"] == f"Token {webapp.token}"
    return puts[0].body


def registry_digest(host: str, repository: str, tag: str) -> str:
    """The digest the registry serves for `repository:tag` (its Docker-Content-Digest)."""
    import httpx

    accept = (
        "application/vnd.docker.distribution.manifest.v2+json,"
        " application/vnd.oci.image.manifest.v1+json"
    )
    response = httpx.head(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": accept},
        auth=registry_auth(),
        timeout=10,
    )
    response.raise_for_status()
    digest = response.headers["Docker-Content-Digest"]
    assert digest.startswith("sha256:"), digest
    return digest


def build_tags(repository: str) -> list[str]:
    """Throw-away build tags left behind locally (there must be none after a publish)."""
    import docker

    images = docker.from_env().images.list(repository)
    return [t for image in images for t in image.tags if ":build-" in t]


def flow_run_logs(state) -> list[str]:
    """The messages the flow run of `state` logged to the Prefect API, in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    time.sleep(1)  # logs reach the API in batches
    run_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(run_filter)]


def simulate_on_worker(behavior: str, title: str = TITLE, adjustment: dict | None = None):
    task_id = str(uuid.uuid4())
    run = submit_simulation(
        OWNER, title, {}, adjustment or behave(behavior), task_id=task_id, wait_seconds=180
    )
    assert run.state.is_final(), f"flow run still {run.state.name} after 180s"
    return task_id, run


def test_publish_pushes_image_and_deploys_on_docker_pool(docker_repo):
    from prefect.client.orchestration import get_client
    from prefect_cs.work_pools.pools import base_job_template

    model = ModelConfig.for_model(OWNER, TITLE)
    entry = model.published()
    assert entry.tier == "docker" and entry.python == MODEL_PYTHON
    # By digest, the one the registry serves for v1: pushing v1 again cannot change what runs.
    assert entry.image == f"{REGISTRY}/{REPOSITORY}@{registry_digest(REGISTRY, REPOSITORY, 'v1')}"
    assert entry.version, "get_version() ran in the image"
    assert "v1" in registry_tags(REPOSITORY)
    assert not [t for t in registry_tags(REPOSITORY) if t.startswith("build-")]

    dep = deployment()
    assert dep.work_pool_name == "cs-docker"
    assert dep.job_variables == {}, "the run reads the image, bounds and secrets from the config"
    assert SECRET_VALUE not in json.dumps(dep.model_dump(mode="json"))
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("cs-docker")
    assert pool.type == "process", "the flow runs on the host, never in the model's image"
    assert pool.base_job_template == base_job_template("process")


def test_image_carries_no_secret(docker_repo):
    import docker

    image = docker.from_env().images.get(f"{REGISTRY}/{REPOSITORY}:v1")
    assert SECRET_VALUE not in json.dumps(image.attrs)
    assert SECRET_VALUE not in json.dumps(image.history())
    assert build_tags(f"{REGISTRY}/{REPOSITORY}") == []


def test_simulation_runs_in_container(worker, webapp, cs_home):
    task_id, run = simulate_on_worker("ok")
    assert run.state.is_completed(), run.state.message
    body = only_put(webapp, task_id)
    assert body["status"] == "SUCCESS" and body["model_version"]
    assert 0 <= body["meta"]["task_times"][0] < 5
    # Billed from the kernel's count of the model's container, as on the process tier.
    assert body["meta"]["cpu_seconds"] > 0 and body["meta"]["peak_memory_mib"] > 5, body["meta"]
    for category in ("renderable", "downloadable"):
        location = body["outputs"][category]["ziplocation"]
        with zipfile.ZipFile(cs_home / "outputs" / location) as archive:
            assert archive.namelist()


def call_containers_created(image: str, since: float, until: float) -> list[dict]:
    """The engine's `create` events of call containers (cs-call-*) of `image` in that window."""
    import docker

    events = docker.from_env().api.events(
        since=int(since) - 1, until=int(until) + 1, decode=True, filters={"event": "create"}
    )
    return [
        e
        for e in events
        if e.get("Type") == "container"
        and since <= e["timeNano"] / 1e9 <= until  # the engine's filter is whole seconds
        and e["Actor"]["Attributes"].get("image") == image
        and e["Actor"]["Attributes"].get("name", "").startswith("cs-call-")
    ]


def test_the_call_starts_before_the_run_is_running_and_is_the_one_used(worker, webapp):
    """The flow-run command (flows/engine.py) begins the run's call container before the engine
    proposes RUNNING (flows/head_start.py), and the flow takes it: the run's only call
    container, and the flow says it took the one begun before RUNNING."""
    from prefect.client.orchestration import get_client

    entry = ModelConfig.for_model(OWNER, TITLE).published()
    task_id, run = simulate_on_worker("ok")
    assert run.state.is_completed(), run.state.message
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run.id)
    running = min(s.timestamp.timestamp() for s in states if s.type.value == "RUNNING")
    ended = max(s.timestamp.timestamp() for s in states)
    first = min(s.timestamp.timestamp() for s in states)
    created = call_containers_created(entry.image, first, ended)
    assert len(created) == 1, [e["Actor"]["Attributes"].get("name") for e in created]
    assert "the model's call was started before this run was RUNNING" in flow_run_logs(run.state)
    # How early, for the README (not asserted: a loaded machine moves it): on this 2-core
    # machine, idle, the container was created ~0.3 s before RUNNING.
    print(f"call container created {running - created[0]['timeNano'] / 1e9:+.2f} s before RUNNING")
    assert only_put(webapp, task_id)["status"] == "SUCCESS"


def test_bytes_outputs_in_container(worker, webapp, cs_home):
    """The image's child runner base64-encodes run_model's raw PDF bytes, as C/S did."""
    task_id, run = simulate_on_worker("pdf_bytes")
    assert run.state.is_completed(), run.state.message
    body = only_put(webapp, task_id)
    assert body["status"] == "SUCCESS"
    info = body["outputs"]["downloadable"]
    report = next(o for o in info["outputs"] if o["title"] == "report")
    with zipfile.ZipFile(cs_home / "outputs" / info["ziplocation"]) as archive:
        assert archive.read(report["filename"]) == sample_app_constant("PDF_BYTES")


@pytest.mark.parametrize(
    ("behavior", "reason"),
    [
        ("raise", "model exploded on purpose"),
        ("segfault", "segmentation fault"),
        ("exit", "exited with code 3"),
        ("oom", "memory"),
        ("not_serializable", "not JSON-serializable"),
        ("bad_media_type", "media_type 'GIF'"),
    ],
)
def test_failure_in_container_is_delivered(worker, webapp, behavior, reason):
    task_id, run = simulate_on_worker(behavior)
    assert run.state.is_failed()
    body = only_put(webapp, task_id)
    assert set(body) == FAIL_KEYS and body["status"] == "FAIL"
    assert reason in body["traceback"], body["traceback"]


def test_hang_container_limits_env_and_cleanup(worker, webapp):
    """While the model hangs: its call container's confinement and environment; after: FAIL
    and no container."""
    from prefect.client.orchestration import get_client

    task_id = str(uuid.uuid4())
    run = submit_simulation(OWNER, TITLE, {}, behave("hang"), task_id=task_id, wait_seconds=0)
    label = f"io.prefect.flow-run-id={run.id}"
    container = wait_for_container(label)
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MODEL_TOKEN"] == SECRET_VALUE, "its declared secret, under its own name"
    assert not [k for k in env if k.startswith(("PREFECT_", "CS_"))], env.keys()
    assert config["User"] == "10001:10001" and config["Image"] == model_image()
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["NetworkMode"] == "none"
    assert host["Memory"] == host["MemorySwap"] == 640 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000 and host["PidsLimit"] == 512
    assert not host.get("Privileged") and not host.get("PidMode")
    assert sorted(m["Destination"] for m in container.attrs["Mounts"]) == [
        "/cs/exchange",
        "/cs/runtime/child.py",
    ]

    body = only_put(webapp, task_id, timeout=120)
    assert body["status"] == "FAIL" and "time limit of 8 seconds" in body["traceback"]
    assert SECRET_VALUE not in json.dumps(body)
    deadline = time.monotonic() + 60
    while containers(label) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert containers(label) == [], "the container was not removed after the run"
    with get_client(sync_client=True) as client:  # the FAIL is sent before the run's own end
        deadline = time.monotonic() + 120
        while not client.read_flow_run(run.id).state.is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.read_flow_run(run.id).state.is_final()


def model_image(title: str = TITLE) -> str:
    return ModelConfig.for_model(OWNER, title).published().image or ""


def test_paramtools_app_in_container(docker_ready, worker, webapp, repos, cs_home):
    repo = make_repo("paramtools-app", repos / "paramtools-docker")
    register_model(OWNER, "ParamTools-Docker", repo, repo_tag="v1", time_limit=60, memory="1Gi")
    with docker_tier():
        state = publish_model(OWNER, "ParamTools-Docker")
    assert state.is_completed(), state.message
    adjustment = json.loads(
        (Path(__file__).parents[1] / "examples/paramtools-app/adjustment.json").read_text()
    )
    task_id, run = simulate_on_worker("", title="ParamTools-Docker", adjustment=adjustment)
    assert run.state.is_completed(), run.state.message
    body = only_put(webapp, task_id)
    media = {
        o["media_type"]
        for c in ("renderable", "downloadable")
        for o in body["outputs"][c]["outputs"]
    }
    assert {"table", "CSV", "PNG"} <= media
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        png = next(n for n in archive.namelist() if n.endswith(".png"))
        assert archive.read(png).startswith(b"\x89PNG\r\n\x1a\n")


def test_registry_login_push_and_worker_pull(docker_repo, worker, webapp):
    """The registry asks for a login: publish pushes with the cs-registry block's, the deployment
    holds none of it, and the flow pulls with it (local copies removed)."""
    import docker
    import httpx

    user, password = registry_auth()
    register_model(OWNER, "Auth-Docker", docker_repo, repo_tag="v1", time_limit=30)
    with docker_tier():
        state = publish_model(OWNER, "Auth-Docker")
    assert state.is_completed(), state.message
    image = ModelConfig.for_model(OWNER, "Auth-Docker").published().image
    assert (
        image
        == f"{REGISTRY}/tests_auth-docker@{registry_digest(REGISTRY, 'tests_auth-docker', 'v1')}"
    )
    tags_url = f"http://{REGISTRY}/v2/tests_auth-docker/tags/list"
    assert httpx.get(tags_url, timeout=10).status_code == 401
    with_login = httpx.get(tags_url, auth=(user, password), timeout=10)
    assert with_login.json()["tags"] == ["v1"]

    dep = deployment("Auth-Docker")
    logs = flow_run_logs(state)
    # Computed outside the asserts: a failing assert must not print the password.
    in_deployment = password in json.dumps(dep.model_dump(mode="json"))
    in_logs = any(password in m for m in logs)
    assert logs and not in_deployment and not in_logs

    for reference in (image, f"{REGISTRY}/tests_auth-docker:v1"):  # no local copy left
        docker.from_env().images.remove(reference)
    task_id, run = simulate_on_worker("ok", title="Auth-Docker")
    assert run.state.is_completed(), run.state.message
    assert only_put(webapp, task_id)["status"] == "SUCCESS"
    assert docker.from_env().images.get(image), "the flow pulled the image with the login"


def test_warm_container_answers_light_calls(docker_repo, task_worker, webapp):
    """version, defaults and parse answered by the shared inputs worker from a warm, confined
    container of the model's own image; it goes when the worker stops."""
    from prefect_cs.flows import inputs
    from prefect_cs.runtime.container import WARM_LABEL

    version = inputs.get_version(OWNER, TITLE)
    assert version["status"] == "SUCCESS" and version["version"] == "0.3.0", version
    task_id = str(uuid.uuid4())
    bad = {"control": {"behavior": [{"value": "explode-the-sun"}]}}
    parsed = inputs.parse(OWNER, TITLE, task_id, {}, bad)
    assert parsed["status"] == "SUCCESS"
    assert parsed["outputs"]["errors_warnings"]["control"]["errors"]["behavior"]
    puts = [r.body for r in webapp.accepted("/inputs/api/") if r.body["task_id"] == task_id]
    assert len(puts) == 1 and puts[0]["status"] == "SUCCESS"
    warm = containers(f"{WARM_LABEL}={model_image()}", all_states=False)
    assert len(warm) == 1, "one warm container per model"
    import docker

    attrs = docker.from_env().containers.get(warm[0]).attrs
    assert attrs["Config"]["User"] == "10001:10001" and attrs["Config"]["Image"] == model_image()
    assert attrs["HostConfig"]["ReadonlyRootfs"] and attrs["HostConfig"]["NetworkMode"] == "none"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert not [k for k in env if k.startswith(("PREFECT_", "CS_"))], env.keys()
    # Every warm container of this server's models (other test files' servers have their own).
    ours = {ident for image in served_images() for ident in containers(f"{WARM_LABEL}={image}")}
    assert warm[0] in ours
    task_worker.stop()
    task_worker.start()  # the module's later tests still have a worker
    assert ours.isdisjoint(containers(WARM_LABEL)), "warm containers outlived their server"


def test_a_killed_inputs_server_leaves_no_warm_container(docker_repo, task_worker, webapp):
    """SIGKILL skips the server's cleanup, so its warm container is left running; the next
    server sweeps it (runtime/container.sweep_orphaned_warm) before it warms its own."""
    import os
    import signal

    from prefect_cs.flows import inputs
    from prefect_cs.runtime.container import WARM_LABEL, WARM_OWNER_LABEL

    from tests.conftest import wait_subscribed

    assert inputs.get_version(OWNER, TITLE)["status"] == "SUCCESS"
    warm = containers(f"{WARM_LABEL}={model_image()}", all_states=False)
    assert len(warm) == 1, "one warm container per model"
    import docker

    labels = docker.from_env().containers.get(warm[0]).labels
    assert labels[WARM_OWNER_LABEL].split(":")[1] == str(task_worker.pid())
    os.killpg(task_worker.pid(), signal.SIGKILL)
    task_worker.stop()  # reaps it: it is gone without having stopped a thing
    assert warm[0] in containers(WARM_LABEL), "the kill left the warm container running"
    since = task_worker.log_file.stat().st_size
    task_worker.start()
    wait_subscribed(task_worker, since)
    deadline = time.monotonic() + 240
    while warm[0] in containers(WARM_LABEL):
        assert time.monotonic() < deadline, "the next server did not remove the orphan"
        time.sleep(0.5)
    answer = inputs.get_version(OWNER, TITLE)
    assert answer["status"] == "SUCCESS", answer
    assert len(containers(f"{WARM_LABEL}={model_image()}", all_states=False)) == 1


def served_images() -> set[str]:
    """The promoted images of the Docker-tier models on this test server."""
    from prefect_cs.registry.configs import all_models

    images = set()
    for model in all_models():
        try:
            entry = model.published()
        except LookupError:
            continue
        if entry.tier == "docker" and entry.image:
            images.add(entry.image)
    return images


def test_image_that_cannot_be_pulled_is_a_fail_naming_it(worker, webapp):
    """An image the registry does not have: the flow (on the host) reports FAIL naming the pull."""
    from prefect_cs.blocks.model_config import PublishedTag
    from prefect_cs.deployments.deploy import deploy_model
    from prefect_cs.registry.configs import register

    ghost = ModelConfig(owner=OWNER, title="Ghost-Docker", repo_url="https://example.invalid/g.git")
    model = register(ghost)
    entry = PublishedTag(
        tag="v1", tier="docker", python=MODEL_PYTHON, image=f"{REGISTRY}/tests_ghost-docker:v1"
    )
    model.record(entry)
    model.latest_tag = "v1"
    model.save_model()
    deploy_model(model, entry)
    task_id, run = simulate_on_worker("ok", title="Ghost-Docker")
    assert run.state.is_failed(), run.state
    body = only_put(webapp, task_id)
    assert body["status"] == "FAIL" and "docker pull" in body["traceback"], body["traceback"]


def test_code_only_republish_reuses_dependency_layer(docker_repo):
    def touch_code(repo: Path) -> None:
        functions = repo / "cs-config" / "cs_config" / "functions.py"
        functions.write_text(functions.read_text() + "\n# a code-only change\n")

    add_tag(docker_repo, "v2", "code only", touch_code)
    with docker_tier():
        state = publish_model(OWNER, TITLE, "v2")
    assert state.is_completed(), state.message
    v1, v2 = f"{REGISTRY}/{REPOSITORY}:v1", f"{REGISTRY}/{REPOSITORY}:v2"
    assert layer_ids(v1, "install.sh") == layer_ids(v2, "install.sh") != []
    assert layer_ids(v1, "pip install /opt/cs/src/cs-config") != layer_ids(
        v2, "pip install /opt/cs/src/cs-config"
    )
    digest = registry_digest(REGISTRY, REPOSITORY, "v2")
    assert model_image() == f"{REGISTRY}/{REPOSITORY}@{digest}"


@pytest.fixture
def serving(docker_repo) -> tuple[str, str]:
    """(promoted tag, deployment image) before the test: v1 alone, or v2 after the re-publish,
    so the failing publish checks "the previous tag keeps serving" whatever ran before it."""
    model = ModelConfig.for_model(OWNER, TITLE)
    return model.latest_tag, model_image()


def test_failing_model_tests_stop_publish(docker_repo, worker, webapp, serving):
    def break_tests(repo: Path) -> None:
        tests = repo / "cs-config" / "cs_config" / "tests" / "test_functions.py"
        tests.write_text(
            tests.read_text() + "\n\ndef test_broken():\n    assert 1 == 2, 'broken on purpose'\n"
        )

    add_tag(docker_repo, "v3", "broken tests", break_tests)
    with docker_tier():
        state = publish_model(OWNER, TITLE, "v3")
    assert state.is_failed()
    assert "broken on purpose" in state.message, state.message
    logs = flow_run_logs(state)
    assert any(m.startswith("[docker-build] Step ") for m in logs), "build progress line by line"
    assert any(m.startswith("[model-tests]") and "broken on purpose" in m for m in logs)
    assert "v3" not in registry_tags(REPOSITORY)
    model = ModelConfig.for_model(OWNER, TITLE)
    assert (model.latest_tag, model_image()) == serving
    assert "@sha256:" in serving[1]  # the serving image, by digest
    assert build_tags(image_repository(REGISTRY, model)) == []
    task_id, run = simulate_on_worker("ok")
    assert run.state.is_completed(), run.state.message
    assert only_put(webapp, task_id)["status"] == "SUCCESS"
