"""The Kubernetes tier's Job, run for real on Docker: the same images, commands, env and limits.

The platform's image is built once for the module (tiers/platform_image.py) and pushed to the
local registry; CS_PLATFORM_IMAGE names it by digest. Publish runs with CS_TIER=kubernetes (the
Docker builder builds, tests and pushes the model's image; the deploy step moves the model to
the kubernetes pool). A simulation is submitted as the web app does, its Job is rendered by
prefect-kubernetes' own code in a worker-like process, and the Job's pod is run with Docker
(testing/job_on_docker.run_pod): the init container copies the runner, then the flow container
(platform image) and the model container (model image, uid 10001, read-only, no capabilities,
no network) run at once, sharing the exchange and runtime emptyDirs as host folders. The flow
must complete and the web app stand-in be notified; the model container must end with it.

Two stand-ins for what a cluster provides: host networking for the flow container (the pod
network reaching the Prefect API) and a bind mount of the local outputs folder (a bucket in
production).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from prefect_cs.testing.docker_tier import (
    REGISTRY,
    container_names_and_ids,
    ensure_docker,
    registry_settings,
)
from prefect_cs.testing.models import make_repo, publish_model, register_model

OWNER, TITLE = "tests", "K8s-On-Docker"
SECRET_VALUE = f"k8s-tok-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def platform_image(platform):
    """The platform's image, built and pushed once for the module (the build cache makes a
    rebuild of an unchanged platform quick); CS_PLATFORM_IMAGE names it by digest."""
    import logging

    from prefect_cs.tiers.platform_image import build_platform_image

    ensure_docker()
    mp = pytest.MonkeyPatch()
    for key, value in registry_settings().items():
        mp.setenv(key, value)
    image = build_platform_image(logging.getLogger("tests.platform_image"))
    mp.setenv("CS_PLATFORM_IMAGE", image)
    yield image
    mp.undo()


@pytest.fixture(scope="module")
def k8s_published(platform_image, repos):
    """The misbehaving app published on the kubernetes tier, with one declared secret."""
    from prefect_cs.security.secrets import get_backend

    mp = pytest.MonkeyPatch()
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


def cluster_stand_ins() -> list[str]:
    """The flow container's host networking and the outputs folder, as `docker run` flags."""
    from prefect_cs.testing.job_on_docker import outputs_volumes

    extra = ["--network", "host"]
    for volume in outputs_volumes():
        extra += ["-v", volume]
    return extra


def run_simulation_pod(
    owner: str, title: str, adjustment: dict, meta: dict | None = None, tag: str | None = None
):
    """Submit, render and run one simulation's pod on Docker: (task_id, run, job, pod run, the
    exchange folder as the pod left it)."""
    from prefect_cs.deployments.submit import submit_simulation
    from prefect_cs.testing.job_on_docker import backend_resolver, run_pod

    task_id = str(uuid.uuid4())
    run = submit_simulation(
        owner,
        title,
        meta_param_dict=meta or {},
        adjustment=adjustment,
        task_id=task_id,
        wait_seconds=0,
        tag=tag,
    )
    job = render_job(run.id)
    mark_submitted(run.id)
    kept = Path(os.environ["CS_HOME"]) / f"pod-{task_id[:8]}"
    pod = run_pod(
        job,
        backend_resolver(owner, title),
        name=f"cs-job-{task_id[:8]}",
        flow_extra=cluster_stand_ins(),
        timeout=300,
        keep=kept,
    )
    return task_id, run, job, pod, kept / "exchange"


def _state(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_rendered_pod_runs_in_its_images_with_docker(
    k8s_published, platform_image, webapp, cs_home
):
    from prefect_cs.testing.job_on_docker import job_container

    task_id, run, job, pod, exchange = run_simulation_pod(
        OWNER, TITLE, {"control": {"behavior": [{"value": "leak_secret"}]}}
    )
    flow, model = job_container(job), job_container(job, "model")
    assert flow["image"] == platform_image
    assert model["image"].startswith(f"{REGISTRY}/tests_k8s-on-docker@sha256:")  # by digest
    refs = {
        c["name"]: sorted(e["name"] for e in c["env"] if "valueFrom" in e) for c in (flow, model)
    }
    assert refs == {
        "prefect-job": ["CS_SECRET_DEMO_TOKEN", "PREFECT_API_AUTH_STRING"],
        "model": ["DEMO_TOKEN"],
    }
    assert SECRET_VALUE not in json.dumps(job)
    assert os.environ["PREFECT_API_AUTH_STRING"] not in json.dumps(job)

    assert pod.code("runtime") == 0, pod.output("runtime")
    assert pod.code("prefect-job") == 0, pod.output("prefect-job")[-3000:]
    assert pod.code("model") == 0, pod.output("model")[-3000:]  # answered, then ended
    assert _state(run.id).is_completed(), _state(run.id)
    body = next(r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id)
    assert body["status"] == "SUCCESS" and body["model_version"] == "0.3.0"
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        summary = archive.read("Summary.md").decode()
    # The secret reached the model container (it printed it into its outputs), and the flow
    # container masked it with its own reference (mask_env), as the other tiers' flows do.
    assert "token: ***" in summary and SECRET_VALUE not in summary
    assert SECRET_VALUE not in pod.output("prefect-job")
    request = json.loads((exchange / "request.json").read_text())
    assert set(request) == {"function", "args", "with_version"}  # no environment, no secret
    names = container_names_and_ids()
    assert not [n for n in names if n.startswith(f"cs-job-{task_id[:8]}")]


def test_a_run_that_never_calls_the_model_ends_the_model_container(k8s_published, webapp):
    """A flow that fails before its model call (a tag that was never published) still ends the
    pod: it writes `{"function": null}`, and the model container exits at once."""
    task_id, run, job, pod, exchange = run_simulation_pod(OWNER, TITLE, {}, tag="v9-never")
    assert pod.code("prefect-job") == 0, pod.output("prefect-job")[-3000:]
    assert pod.code("model") == 0, pod.output("model")[-3000:]
    assert json.loads((exchange / "request.json").read_text()) == {"function": None}
    assert not (exchange / "response.json").exists()
    body = next(r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id)
    assert body["status"] == "FAIL"


# ---- the attacker: what its image plants runs only in the model container ---------------------

PLANT = r"""
# Planted by the attacker's install.sh (tests/test_k8s_on_docker.py): code that runs in every
# interpreter of the model venv, recording where it ran and what it saw.
site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
record='import os, json, sys; d = "/cs/exchange"; os.path.isdir(d) and os.access(d, os.W_OK) and open(os.path.join(d, "planted-%s-%d.json" % (KIND, os.getpid())), "w").write(json.dumps({"uid": os.getuid(), "env": sorted(os.environ), "auth": os.environ.get("PREFECT_API_AUTH_STRING")}))'
echo "KIND = 'pth'; $record" | sed 's/^/import os; /' > "$site/zz_planted.pth"
printf 'KIND = "sitecustomize"\n%s\n' "$record" > "$site/sitecustomize.py"
# Debian's own sitecustomize comes first on sys.path: root in the build rewrites that one too.
for f in /etc/python3*/sitecustomize.py; do
  [ -f "$f" ] && printf '\nKIND = "sitecustomize"\n%s\n' "$record" >> "$f"
done
true
"""  # noqa: E501 (the recorder is one shell-quoted line of Python)


@pytest.fixture(scope="module")
def k8s_attacker(platform_image, repos, cs_home):
    """The attacker app on the kubernetes tier, its install.sh planting a .pth and a
    sitecustomize.py in the model venv (as root, in the image build)."""
    import shutil

    from prefect_cs.testing.models import EXAMPLES, add_tag, git

    from tests.test_attacks import attack_targets

    repo = repos / f"attacker-k8s-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLES / "attacker-app", repo)
    (repo / "cs-config" / "cs_config" / "targets.json").write_text(
        json.dumps(attack_targets(cs_home))
    )
    install = repo / "cs-config" / "install.sh"
    install.write_text(install.read_text() + PLANT)
    git(repo, "init", "-q")
    add_tag(repo, "v1", "attacker")
    mp = pytest.MonkeyPatch()
    mp.setenv("CS_TIER", "kubernetes")
    register_model(OWNER, "Attacker-K8s", repo, repo_tag="v1", time_limit=60)
    state = publish_model(OWNER, "Attacker-K8s")
    mp.undo()
    assert state.is_completed(), state.message


def test_what_the_model_image_plants_never_runs_with_the_flow_credentials(
    k8s_attacker, webapp, cs_home
):
    """The attacker's .pth and sitecustomize run, but only in the model container: as uid
    10001, with no Prefect login and no platform setting in its environment. The flow ran in the
    platform's image and completed; every probe of the attacker's run_model got nothing."""
    from tests.test_attacks import assert_got_nothing, delivered_report

    task_id, run, job, pod, exchange = run_simulation_pod(
        OWNER, "Attacker-K8s", {}, meta={"targets": {"webapp": webapp.url}}
    )
    assert pod.code("prefect-job") == 0, pod.output("prefect-job")[-3000:]
    assert pod.code("model") == 0, pod.output("model")[-3000:]
    report = delivered_report(webapp, cs_home, task_id)
    assert_got_nothing(report, "run_model")
    records = [json.loads(p.read_text()) for p in sorted(exchange.glob("planted-*.json"))]
    kinds = {p.name.split("-")[1] for p in exchange.glob("planted-*.json")}
    assert kinds == {"pth", "sitecustomize"}, kinds  # the planted code did run: in the model's
    for record in records:
        assert record["uid"] == 10001 and record["auth"] is None, record
        assert not [n for n in record["env"] if n.startswith(("PREFECT", "CS_"))], record
    assert "planted" not in pod.output("prefect-job")
    assert os.environ["PREFECT_API_AUTH_STRING"] not in json.dumps(records)


# ---- the inputs server pod: the task worker in the platform image, the model's zygote beside it --


def test_inputs_server_pod_answers_through_its_model_container(
    k8s_published, platform_image, cs_home
):
    """`prefect-cs k8s render`'s inputs server Deployment, its pod run on Docker: the init
    container makes the named pipes, the inputs worker (platform image, host network as the
    pod network) answers version and defaults through the model container (model image, uid
    10001, no network), which keeps the secret the worker never holds."""
    from prefect_cs.flows import inputs
    from prefect_cs.infra.kubernetes import operator_manifests
    from prefect_cs.testing.job_on_docker import Pod, backend_resolver

    manifests = operator_manifests(
        [model_config(OWNER, TITLE)],
        os.environ["PREFECT_API_URL"],
        with_secrets=False,
        platform_image=platform_image,
    )
    (server,) = [m for m in manifests if m["metadata"]["name"].startswith("cs-inputs-")]
    spec = server["spec"]["template"]
    worker, model = spec["spec"]["containers"]
    assert worker["image"] == platform_image and model["image"] != platform_image
    name = f"cs-inputs-{uuid.uuid4().hex[:8]}"
    pod = Pod(
        spec,
        backend_resolver(OWNER, TITLE),
        name,
        ["--network", "host", "-v", f"{cs_home}:{cs_home}"],
    )
    try:
        assert pod.start(), pod.ended
        version = inputs.for_model(inputs.version_task, OWNER, TITLE)
        answer = inputs._run(version, OWNER, TITLE, None, timeout=120)
        assert answer["status"] == "SUCCESS" and answer["version"] == "0.3.0", answer
        defaults = inputs.for_model(inputs.defaults_task, OWNER, TITLE)
        answer = inputs._run(defaults, OWNER, TITLE, {}, None, timeout=60)
        assert answer["status"] == "SUCCESS" and "model_parameters" in answer, answer
    finally:
        ended = pod.stop()
    assert SECRET_VALUE not in ended.output("inputs")


def model_config(owner: str, title: str):
    from prefect_cs.blocks.model_config import ModelConfig

    return ModelConfig.for_model(owner, title)
