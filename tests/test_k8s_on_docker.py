"""The Kubernetes tier's Job, run for real on Docker: the same image, command, env and limits.

Publish runs with CS_TIER=kubernetes (the Docker builder builds, tests and
pushes the image to the local registry; the deploy step moves the model to the
kubernetes pool). A simulation is submitted as the web app does, its Job is
rendered by prefect-kubernetes' own code in a worker-like process, and the
Job's container is started with `docker run` (secretKeyRefs resolved from the
secrets backend, as the kubelet would from the model's Secret). The flow must
complete inside that container and the web app stand-in be notified.

Two stand-ins for what a cluster provides: host networking (the pod network
reaching the Prefect API) and a bind mount of the local outputs folder (a
bucket in production).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile

import pytest
from prefect_cs.testing.docker_tier import REGISTRY, ensure_docker, registry_settings
from prefect_cs.testing.models import make_repo, publish_model, register_model

OWNER, TITLE = "tests", "K8s-On-Docker"
SECRET_VALUE = f"k8s-tok-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def k8s_published(platform, repos):
    """The misbehaving app published on the kubernetes tier, with one declared secret."""
    from prefect_cs.security.secrets import get_backend

    ensure_docker()
    mp = pytest.MonkeyPatch()
    for key, value in registry_settings().items():
        mp.setenv(key, value)
    mp.setenv("CS_TIER", "kubernetes")
    repo = make_repo("misbehaving-app", repos / "k8s-on-docker")
    register_model(
        OWNER, TITLE, repo, repo_tag="v1", time_limit=60, memory="512Mi", secrets=["DEMO_TOKEN"]
    )
    get_backend(f"{OWNER}/{TITLE}").set("DEMO_TOKEN", SECRET_VALUE)
    state = publish_model(OWNER, TITLE)
    mp.undo()
    assert state.is_completed(), state.message
    yield


def render_job(flow_run_id) -> dict:
    """`prefect-cs k8s job` in a process with only a worker's settings, as the worker renders it."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PREFECT_API_URL": os.environ["PREFECT_API_URL"],
        "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "prefect_cs.cli.main", "k8s", "job", str(flow_run_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mark_submitted(flow_run_id) -> None:
    """What the worker does before it creates the Job."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state

    async def submitted():
        async with get_client() as client:
            await propose_state(client, Pending(), flow_run_id=flow_run_id)

    anyio.run(submitted)


def cluster_stand_ins(argv: list[str]) -> list[str]:
    """Host networking and the outputs folder mounted, right after `docker run`."""
    from prefect_cs.tiers.docker import container_volumes

    extra = ["--network", "host"]
    for volume in container_volumes():
        extra += ["-v", volume]
    return argv[:2] + extra + argv[2:]


def test_rendered_job_runs_in_its_image_with_docker(k8s_published, webapp, cs_home):
    import docker
    from prefect.client.orchestration import get_client
    from prefect_cs.deployments.submit import submit_simulation
    from prefect_cs.testing.job_on_docker import backend_resolver, docker_run_args

    task_id = str(uuid.uuid4())
    run = submit_simulation(
        OWNER,
        TITLE,
        adjustment={"control": {"behavior": [{"value": "leak_secret"}]}},
        task_id=task_id,
        wait_seconds=0,
    )
    job = render_job(run.id)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(f"{REGISTRY}/tests_k8s-on-docker@sha256:")  # by digest
    refs = [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert sorted((e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in refs) == [
        ("CS_SECRET_DEMO_TOKEN", "DEMO_TOKEN"),
        ("PREFECT_API_AUTH_STRING", "auth-string"),
    ]
    assert SECRET_VALUE not in json.dumps(job)
    assert os.environ["PREFECT_API_AUTH_STRING"] not in json.dumps(job)

    name = f"cs-job-{task_id[:8]}"
    argv, env = docker_run_args(job, backend_resolver(OWNER, TITLE), name=name)
    assert SECRET_VALUE not in " ".join(argv)
    mark_submitted(run.id)
    done = subprocess.run(
        cluster_stand_ins(argv),
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.is_completed(), state
    body = next(r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id)
    assert body["status"] == "SUCCESS" and body["model_version"] == "0.3.0"
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        assert "token: ***" in archive.read("Summary.md").decode()  # the secret reached the model
    assert SECRET_VALUE not in done.stdout + done.stderr
    assert docker.from_env().containers.list(all=True, filters={"name": name}) == []
