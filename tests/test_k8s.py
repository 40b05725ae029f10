"""The Kubernetes tier without a cluster.

The deploy step creates a real deployment on a real Prefect server; the Job is
rendered from it by prefect-kubernetes' own code (`resolve_for_flow_run`, as
its worker does), in a separate process started with a worker-like
environment, and validated strictly against the Kubernetes 1.37 schema, as
are the operator's manifests. Lost runs (Crashed by the observer, or never
started) are reported to a real web app stand-in.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

SECRET_VALUE = "s3cr3t-k8s-value-9f2c"
DB_URL = "postgresql+asyncpg://prefect:db-password-77@db:5432/prefect"
IMAGE = "registry.example:5000/tests_k8s_demo:v1"
PLATFORM_IMAGE = "registry.example:5000/prefect-cs-platform@sha256:" + "ab" * 32
VERSION = "1.37.0"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CS = "cs.compute.studio"


@pytest.fixture(scope="module", autouse=True)
def platform_image_setting():
    """Where publish's deploy step runs, CS_PLATFORM_IMAGE names the platform's image."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CS_PLATFORM_IMAGE", PLATFORM_IMAGE)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def k8s_model(platform):
    """A 2 CPU / 4 GiB model with one secret, published on the kubernetes tier and deployed."""
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.deployments.deploy import deploy_model
    from prefect_cs.registry.configs import register
    from prefect_cs.security.secrets import get_backend

    model = register(
        ModelConfig(
            owner="tests",
            title="K8s_Demo",
            repo_url="https://example.invalid/k8s-demo.git",
            cpu=2,
            memory="4Gi",
            time_limit=600,
            secrets=["API_TOKEN"],
        )
    )
    get_backend("tests/K8s_Demo").set("API_TOKEN", SECRET_VALUE)
    entry = PublishedTag(
        tag="v1", tier="kubernetes", python="/opt/cs/model/bin/python", image=IMAGE
    )
    model.record(entry)
    model.latest_tag = "v1"
    model.save_model()
    deploy_model(model, entry)
    return model


def submit(task_id: str):
    from prefect_cs.deployments.submit import submit_simulation

    return submit_simulation("tests", "K8s_Demo", adjustment={}, task_id=task_id, wait_seconds=0)


def worker_like_env() -> dict[str, str]:
    """What a carelessly started worker would carry: the job must not inherit the database URL."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PREFECT_API_URL": os.environ["PREFECT_API_URL"],
        "PREFECT_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": DB_URL,
        "PREFECT_API_KEY": "pnu_not-for-jobs-31",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def render(flow_run_id) -> dict:
    """`prefect-cs k8s job` in its own process, as the worker would build the Job."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect_cs.cli.main", "k8s", "job", str(flow_run_id)],
        env=worker_like_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rendered(k8s_model):
    task_id = str(uuid.uuid4())
    run = submit(task_id)
    return task_id, run, render(run.id)


def container_of(job: dict, name: str = "prefect-job") -> dict:
    from prefect_cs.testing.job_on_docker import job_container

    return job_container(job, name)


def test_deploy_step_moves_the_model_to_the_kubernetes_pool(k8s_model):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("simulate/tests-k8s-demo")
        pool = client.read_work_pool("cs-kubernetes")
    assert deployment.work_pool_name == "cs-kubernetes" and pool.type == "kubernetes"
    variables = deployment.job_variables
    assert variables["image"] == IMAGE and variables["platform_image"] == PLATFORM_IMAGE
    assert (variables["cpu_request"], variables["memory_request"]) == ("2", "4096Mi")
    assert {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "cs-model-tests-k8s-demo", "key": "API_TOKEN"}},
    } in variables["model_env"]
    assert SECRET_VALUE not in json.dumps(variables)


def test_rendered_job_is_valid_and_carries_the_model_config(rendered):
    from prefect_cs.testing.manifests import validate

    task_id, run, job = rendered
    assert validate([job], VERSION) == 1
    spec = job["spec"]
    assert (spec["parallelism"], spec["completions"]) == (1, 1)
    assert "parallelism" not in spec["template"]["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 600 + 420
    flow, model = spec["template"]["spec"]["containers"]
    assert (flow["name"], model["name"]) == ("prefect-job", "model")  # the worker fills the first
    assert flow["image"] == PLATFORM_IMAGE and model["image"] == IMAGE
    assert model["resources"] == {
        "requests": {"cpu": "2", "memory": "4096Mi"},
        "limits": {"cpu": "2", "memory": "5120Mi"},
    }
    assert flow["args"] == ["/opt/cs/platform/bin/prefect", "flow-run", "execute"]
    assert model["command"] == [
        "/opt/cs/model/bin/python",
        "-I",
        "/cs/runtime/child.py",
        "--wait-for",
        "/cs/exchange/request.json",
        "/cs/exchange/response.json",
        "300",
    ]
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {f"{CS}/pool": "models"}
    assert pod["tolerations"][0]["key"] == f"{CS}/models"
    assert pod["imagePullSecrets"] == [{"name": "cs-registry"}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "cs-model-job"
    assert job["metadata"]["namespace"] == "cs-models"


def test_pod_splits_the_flow_from_the_model(rendered):
    """The flow in the platform image with the API login and no model secret; the model in its
    image as uid 10001, read-only, no capabilities, RuntimeDefault seccomp, its secrets only;
    the init container copies the runner; the three emptyDirs; no service-account token."""
    _, _, job = rendered
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    flow, model = container_of(job), container_of(job, "model")
    (init,) = pod["initContainers"]
    assert init["image"] == PLATFORM_IMAGE
    assert init["command"] == ["cp", "/opt/cs/runtime/child.py", "/cs/runtime/child.py"]
    locked = {
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert model["securityContext"] == locked and init["securityContext"] == locked
    assert flow["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in (flow, model, init)}
    assert set(mounts["prefect-job"]) == {"exchange"}
    assert set(mounts["model"]) == {"exchange", "runtime", "work"}
    assert mounts["model"]["runtime"]["readOnly"] is True
    assert mounts["model"]["work"]["mountPath"] == model["workingDir"] == "/cs/work"
    volumes = {v["name"]: v["emptyDir"] for v in pod["volumes"]}
    assert volumes["work"] == {"sizeLimit": "2048Mi"}  # the model config's disk
    assert set(volumes) == {"exchange", "runtime", "work"}

    flow_env = {e["name"]: e for e in flow["env"]}
    model_env = {e["name"]: e for e in model["env"]}
    # The Prefect login and settings: the flow's only.
    assert "PREFECT_API_AUTH_STRING" in flow_env and "PREFECT__FLOW_RUN_ID" in flow_env
    assert not [name for name in model_env if name.startswith(("PREFECT", "CS_"))]
    # The model's secret: given to the model only; the flow holds a reference of its own under
    # another name, to mask it in what leaves the Job, never one a model call is given.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in flow["env"] if "valueFrom" in e}
    assert refs == {
        "PREFECT_API_AUTH_STRING": {"name": "prefect-auth", "key": "auth-string"},
        "CS_SECRET_API_TOKEN": {"name": "cs-model-tests-k8s-demo", "key": "API_TOKEN"},
    }
    assert "API_TOKEN" not in flow_env
    assert model_env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "cs-model-tests-k8s-demo",
        "key": "API_TOKEN",
    }
    assert flow_env["CS_SECRETS_SOURCE"]["value"] == "pod"
    assert flow_env["CS_EXCHANGE_DIR"]["value"] == "/cs/exchange"
    assert {k: model_env[k]["value"] for k in ("HOME", "TMPDIR", "PATH")} == {
        "HOME": "/cs/work",
        "TMPDIR": "/cs/work",
        "PATH": "/opt/cs/model/bin:/usr/local/bin:/usr/bin:/bin",
    }
    assert model_env["OMP_NUM_THREADS"]["value"] == "2"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[f"{CS}/role"] == "job" and labels[f"{CS}/internet"] == "false"


def test_labels_carry_owner_title_tag_task_and_flow_run(rendered):
    task_id, run, job = rendered
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[f"{CS}/owner"] == "tests"
        assert labels[f"{CS}/title"] == "K8s_Demo"
        assert labels[f"{CS}/task-id"] == task_id
        # What the worker's cancellation and the observer find the Job and pod by.
        assert labels["prefect.io/flow-run-id"] == str(run.id)
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values()), labels
    assert job["metadata"]["labels"][f"{CS}/tag"] == "v1"


def test_job_env_has_secret_references_and_no_platform_credentials(rendered):
    _, run, job = rendered
    env = {e["name"]: e for e in container_of(job)["env"]}
    assert "API_TOKEN" not in env  # the model's only
    # the flow's reference to mask it with: by reference, never a value
    assert set(env["CS_SECRET_API_TOKEN"]) == {"name", "valueFrom"}
    assert env["CS_SECRETS_SOURCE"]["value"] == "pod"
    assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(run.id)
    assert env["PREFECT_API_URL"]["value"] == os.environ["PREFECT_API_URL"]
    # Evicted pod (SIGTERM) -> Prefect reschedules the run instead of losing it.
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]["value"] == "reschedule"
    for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_KEY", "PREFECT_HOME"):
        assert name not in env
    text = json.dumps(job)
    assert SECRET_VALUE not in text and "db-password-77" not in text
    assert "pnu_not-for-jobs-31" not in text
    # The worker holds the API login; the Job gets it by reference to the operator's Secret.
    assert env["PREFECT_API_AUTH_STRING"] == {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": "prefect-auth", "key": "auth-string"}},
    }
    assert os.environ["PREFECT_API_AUTH_STRING"] not in text


def test_task_id_label_is_only_sent_to_kubernetes_pools(k8s_model):
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.tiers.kubernetes import task_job_variables

    assert task_job_variables(k8s_model, "abc-1") == {"task_id": "abc-1"}
    local = ModelConfig(owner="o", title="t", repo_url="/x", latest_tag="v1")
    local.record(PublishedTag(tag="v1", python="/usr/bin/python3"))
    assert task_job_variables(local, "abc-1") == {}
    unpublished = ModelConfig(owner="o", title="t", repo_url="/x")
    assert task_job_variables(unpublished, "abc-1") == {}


def test_label_values_are_sanitized():
    from prefect_cs.core.names import label_value

    for raw in ["-_Tax-Brain_-", "v1.2+build/7", "x" * 80, "ünïcode tag", "__", "1.0"]:
        value = label_value(raw)
        assert LABEL_VALUE.match(value) and len(value) <= 63, (raw, value)
    assert label_value("v1.2+build/7") == "v1.2-build-7"
    assert label_value("-_Tax-Brain_-") == "Tax-Brain"


def test_job_variables_need_an_image():
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.tiers.kubernetes import KubernetesTier

    model = ModelConfig(owner="o", title="t", repo_url="/x", cpu=0.5, memory="512Mi")
    with pytest.raises(ValueError, match="no image"):
        KubernetesTier().job_variables(model, PublishedTag(tag="v1", python="/p"))
    variables = KubernetesTier().job_variables(
        model, PublishedTag(tag="v1", tier="kubernetes", python="/p", image="r/o_t:v1")
    )
    assert (variables["cpu_request"], variables["memory_limit"]) == ("500m", "640Mi")


def test_operator_manifests_are_valid(k8s_model):
    from prefect_cs.infra.kubernetes import operator_manifests
    from prefect_cs.testing.manifests import validate

    manifests = operator_manifests(
        [k8s_model], "http://prefect-server.prefect:4200/api", platform_image="r/prefect-cs:1"
    )
    assert validate(manifests, VERSION) == len(manifests) == 11
    by_kind = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
    assert [m["metadata"]["name"] for m in by_kind["Namespace"]] == ["prefect", "cs-models"]
    secret = by_kind["Secret"][0]
    assert secret["metadata"]["name"] == "cs-model-tests-k8s-demo"
    assert base64.b64decode(secret["data"]["API_TOKEN"]).decode() == SECRET_VALUE
    watcher, inputs = by_kind["Deployment"]
    assert watcher["metadata"]["namespace"] == "prefect"
    assert watcher["spec"]["template"]["spec"]["containers"][0]["command"][:2] == [
        "prefect-cs",
        "watch",
    ]
    pod = inputs["spec"]["template"]["spec"]
    worker, model = pod["containers"]
    (init,) = pod["initContainers"]
    assert (worker["name"], model["name"]) == ("inputs", "model")
    assert worker["image"] == init["image"] == "r/prefect-cs:1" and model["image"] == IMAGE
    assert worker["command"][-2:] == ["-m", "prefect_cs.services.inputs_server"]
    # the module the pod runs exists and is runnable (it once pointed at a module with no __main__)
    spec = importlib.util.find_spec(worker["command"][-1])
    assert spec and 'if __name__ == "__main__":' in Path(spec.origin).read_text()
    assert model["command"][2:] == [
        "/cs/runtime/child.py",
        "--serve-paths",
        "/cs/exchange/in",
        "/cs/exchange/out",
        "--reap",
        "--empty",
        "/cs/work",
    ]
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "5120Mi"}
    assert model["securityContext"]["runAsUser"] == 10001
    assert model["securityContext"]["readOnlyRootFilesystem"] is True
    assert {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "cs-model-tests-k8s-demo", "key": "API_TOKEN"}},
    } in model["env"]
    # the model's only, but for the worker's reference to mask it with
    assert [e["name"] for e in worker["env"] if "API_TOKEN" in e["name"]] == ["CS_SECRET_API_TOKEN"]
    assert not [e for e in model["env"] if e["name"].startswith(("PREFECT", "CS_"))]
    assert {"name": "CS_EXCHANGE_DIR", "value": "/cs/exchange"} in worker["env"]
    assert inputs["spec"]["template"]["metadata"]["labels"][f"{CS}/role"] == "job"
    login = {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": "prefect-auth", "key": "auth-string"}},
    }
    for deployment in (watcher, inputs):
        assert login in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert login not in model["env"]
    assert os.environ["PREFECT_API_AUTH_STRING"] not in json.dumps(manifests)
    assert SECRET_VALUE not in json.dumps(inputs)
    policies = {m["metadata"]["name"]: m["spec"] for m in by_kind["NetworkPolicy"]}
    jobs = policies["cs-model-jobs"]
    assert jobs["podSelector"] == {"matchLabels": {f"{CS}/role": "job"}}
    assert jobs["ingress"] == [] and set(jobs["policyTypes"]) == {"Ingress", "Egress"}
    dns, api, *_ = jobs["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert api == {  # prefect-server.prefect: the API's namespace, its port, nothing else there
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prefect"}}}],
        "ports": [{"protocol": "TCP", "port": 4200}],
    }
    for rule in jobs["egress"]:  # nothing private but the named namespaces
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert "10.0.0.0/8" in peer["ipBlock"]["except"]
    internet = policies["cs-model-jobs-internet"]
    assert internet["podSelector"]["matchLabels"][f"{CS}/internet"] == "true"
    role = next(m for m in by_kind["Role"])
    verbs = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert verbs["jobs"] == {"create", "get", "list", "watch", "delete"}
    assert verbs["secrets"] == {"get", "list", "watch"}
    binding = by_kind["RoleBinding"][0]
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "prefect-worker",
        "namespace": "prefect",
    }
    job_account = next(
        m for m in by_kind["ServiceAccount"] if m["metadata"]["name"] == "cs-model-job"
    )
    assert job_account["automountServiceAccountToken"] is False


def test_render_cli_writes_files_for_kubectl(k8s_model, tmp_path):
    from prefect_cs.testing.manifests import validate

    out = tmp_path / "manifests"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_cs.cli.main",
            "k8s",
            "render",
            "-m",
            "tests/K8s_Demo",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert SECRET_VALUE not in done.stdout + done.stderr
    files = sorted(out.iterdir())
    texts = [f.read_text() for f in files]
    assert not any("&id" in text for text in texts)  # plain YAML, no anchors
    manifests = [yaml.safe_load(text) for text in texts]
    assert len(manifests) == 10
    assert validate(manifests, VERSION) == 10
    secret_file = next(f for f, m in zip(files, manifests, strict=True) if m["kind"] == "Secret")
    assert secret_file.stat().st_mode & 0o777 == 0o600


def test_container_spec_becomes_a_docker_run(rendered):
    from prefect_cs.testing.job_on_docker import docker_run_args

    _, run, job = rendered
    resolved = []

    def resolve(secret: str, key: str) -> str:
        resolved.append((secret, key))
        return SECRET_VALUE

    argv, env = docker_run_args(job, resolve, name="sim")
    # the flow container: the login, and its own reference to the model's secret to mask it with
    assert resolved == [("prefect-auth", "auth-string"), ("cs-model-tests-k8s-demo", "API_TOKEN")]
    assert argv[:5] == ["docker", "run", "--rm", "--name", "sim"]
    image_at = argv.index(PLATFORM_IMAGE)
    assert argv[image_at + 1 :] == ["/opt/cs/platform/bin/prefect", "flow-run", "execute"]
    assert env["PREFECT__FLOW_RUN_ID"] == str(run.id) and "API_TOKEN" not in env
    assert env["CS_SECRET_API_TOKEN"] == SECRET_VALUE and SECRET_VALUE not in " ".join(argv)

    folders = {"exchange": Path("/x/exchange"), "runtime": Path("/x/runtime")}
    resolved.clear()
    argv, env = docker_run_args(job, resolve, "sim-model", "model", folders, "none")
    assert resolved == [("cs-model-tests-k8s-demo", "API_TOKEN")]
    assert env["API_TOKEN"] == SECRET_VALUE and SECRET_VALUE not in " ".join(argv)
    flags = " ".join(argv[: argv.index("--entrypoint")])
    for flag in (
        "--network none",
        "--cpus 2",
        f"--memory {5120 * 1024 * 1024} --memory-swap {5120 * 1024 * 1024}",
        "--user 10001:10001",
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--volume /x/exchange:/cs/exchange:rw",
        "--volume /x/runtime:/cs/runtime:ro",
        f"--tmpfs /cs/work:size={2048 * 1024 * 1024},mode=0700,uid=10001,gid=10001",
        "--workdir /cs/work",
    ):
        assert flag in flags, flag
    assert argv[argv.index(IMAGE) - 2 :][:2] == ["--entrypoint", "/opt/cs/model/bin/python"]
    assert {argv[i + 1] for i, a in enumerate(argv) if a == "-e"} == set(env)


def test_quantities_translate_to_docker_units():
    from prefect_cs.testing.job_on_docker import cpu_cores, memory_bytes

    assert [cpu_cores(q) for q in ("2", "500m", "1.5")] == ["2", "0.5", "1.5"]
    assert memory_bytes("4Gi") == 4 * 1024**3 and memory_bytes("512M") == 512 * 1000**2
    with pytest.raises(ValueError, match="CPU quantity"):
        cpu_cores("2Gi")


def _observer_crash(run_id, diagnosis: str) -> None:
    """What prefect-kubernetes' observer does for a failed Job: log the diagnosis, propose
    Crashed."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.states import Crashed, Pending
    from prefect.utilities.engine import propose_state

    async def crash():
        async with get_client() as client:
            await propose_state(client, Pending(), flow_run_id=run_id)
            await client.create_logs(
                [
                    LogCreate(
                        name="prefect.flow_runs.observer",
                        level=logging.ERROR,
                        message=diagnosis,
                        timestamp=datetime.now(UTC),
                        flow_run_id=run_id,
                    )
                ]
            )
            state = await propose_state(
                client,
                Crashed(message="No active or succeeded pods found for any job"),
                flow_run_id=run_id,
            )
            assert state.is_crashed()

    anyio.run(crash)


def _puts(webapp, task_id: str) -> list[dict]:
    return [r.body for r in webapp.accepted("/outputs/api/") if r.body.get("task_id") == task_id]


def test_crashed_run_reaches_the_webapp_as_fail_once(k8s_model, webapp):
    from prefect.client.orchestration import get_client
    from prefect_cs.services.lost_runs import REPORTED_TAG, scan_once

    task_id = str(uuid.uuid4())
    run = submit(task_id)
    diagnosis = (
        "Image pull failed for container 'prefect-job': Kubernetes cannot pull the"
        " container image. Reason: ErrImagePull."
    )
    _observer_crash(run.id, diagnosis)
    assert _puts(webapp, task_id) == []
    assert scan_once(pending_timeout=3600, only=[run.id]) == []  # within the crash grace
    reports = scan_once(pending_timeout=3600, only=[run.id], crash_grace=0)
    assert [r["task_id"] for r in reports] == [task_id] and reports[0]["delivered"] is True
    (body,) = _puts(webapp, task_id)
    assert set(body) == {"task_id", "status", "meta", "traceback"} and body["status"] == "FAIL"
    assert "Crashed: No active or succeeded pods" in body["traceback"]
    assert "ErrImagePull" in body["traceback"]
    assert scan_once(pending_timeout=3600, only=[run.id], crash_grace=0) == []
    assert len(_puts(webapp, task_id)) == 1
    with get_client(sync_client=True) as client:
        assert REPORTED_TAG in client.read_flow_run(run.id).tags


def test_run_never_started_is_failed_and_cancelled(k8s_model, webapp):
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state
    from prefect_cs.services.lost_runs import scan_once

    task_id = str(uuid.uuid4())
    run = submit(task_id)

    async def pending():
        async with get_client() as client:
            await propose_state(client, Pending(), flow_run_id=run.id)

    anyio.run(pending)
    assert scan_once(pending_timeout=3600, only=[run.id]) == []  # not stuck yet
    reports = scan_once(pending_timeout=0, only=[run.id])
    assert len(reports) == 1
    (body,) = _puts(webapp, task_id)
    assert body["status"] == "FAIL" and "did not start within" in body["traceback"]
    with get_client(sync_client=True) as client:
        # CANCELLING: the Kubernetes worker now deletes the Job (Foreground: its pod first).
        assert client.read_flow_run(run.id).state.type.value == "CANCELLING"


def test_run_no_worker_takes_is_failed_and_cancelled(k8s_model, webapp):
    from prefect.client.orchestration import get_client
    from prefect.states import Late
    from prefect_cs.services.lost_runs import scan_once

    task_id = str(uuid.uuid4())
    run = submit(task_id)
    assert scan_once(pending_timeout=0, only=[run.id]) == []  # Scheduled on time: not stuck
    due = datetime.now(UTC) - timedelta(seconds=30)  # as Prefect marks a run Late, 15 s after
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Late(scheduled_time=due), force=True)
    assert len(scan_once(pending_timeout=0, only=[run.id])) == 1  # no worker polls the pool
    (body,) = _puts(webapp, task_id)
    assert "no worker is polling" in body["traceback"]
    assert _state(run.id).type.value == "CANCELLED"


def test_pool_cli_applies_the_template(platform):
    from prefect.client.orchestration import get_client

    done = subprocess.run(
        [sys.executable, "-m", "prefect_cs.cli.main", "pool", "kubernetes"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    template = json.loads(
        (Path(__file__).resolve().parents[1] / "work_pools" / "kubernetes.json").read_text()
    )
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("cs-kubernetes").base_job_template == template


def test_template_always_sets_ttl_and_keeps_job_fields_in_the_job_spec():
    template = json.loads(
        (Path(__file__).resolve().parents[1] / "work_pools" / "kubernetes.json").read_text()
    )
    spec = template["job_configuration"]["job_manifest"]["spec"]
    assert spec["ttlSecondsAfterFinished"] == "{{ finished_job_ttl }}"
    assert template["variables"]["properties"]["finished_job_ttl"]["default"] > 0
    assert (spec["parallelism"], spec["completions"]) == (1, 1)
    assert "parallelism" not in spec["template"]["spec"]


@pytest.fixture(scope="module")
def hang_model(misbehaving):
    """A kubernetes-tier model whose environment is the misbehaving app's, to run its Job's command
    here."""
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.deployments.deploy import deploy_model
    from prefect_cs.registry.configs import register
    from prefect_cs.security.secrets import get_backend

    python = ModelConfig.for_model("tests", "Misbehaving").published().python
    model = register(
        ModelConfig(
            owner="tests",
            title="K8s_Hang",
            repo_url="https://example.invalid/k8s-hang.git",
            time_limit=60,
            secrets=["API_TOKEN"],
        )
    )
    get_backend("tests/K8s_Hang").set("API_TOKEN", SECRET_VALUE)
    entry = PublishedTag(  # version: what publish records from get_version, and the web app gets
        tag="v1",
        tier="kubernetes",
        python=python,
        image="registry.example:5000/tests_k8s_hang:v1",
        version="0.3.0",
    )
    model.record(entry)
    model.latest_tag = "v1"
    model.save_model()
    deploy_model(model, entry)
    return model


def _state(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def _wait_for(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def job_process(flow_run_id, log: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """The rendered Job's two containers, run as local processes: their commands and envs.

    secretKeyRefs are resolved from the secrets backend, as the kubelet would from the
    model's Secret; the platform image's `prefect` is this virtualenv's, the model image's
    python the misbehaving app's venv, and a temporary folder the `exchange` emptyDir. PATH,
    HOME and CS_* stand in for what the platform image itself sets. (tests/test_k8s_on_docker.py
    runs the same pod in its real images, confined.)
    """
    import tempfile

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect.utilities.engine import propose_state
    from prefect_cs.runtime.model_process import CHILD_SCRIPT
    from prefect_cs.testing.job_on_docker import backend_resolver, container_env

    job = render(flow_run_id)
    resolve = backend_resolver("tests", "K8s_Hang")
    flow, model = container_of(job), container_of(job, "model")
    env, secret_names = container_env(flow, resolve)
    assert secret_names == {"PREFECT_API_AUTH_STRING", "CS_SECRET_API_TOKEN"}  # the latter to mask
    model_env, model_secrets = container_env(model, resolve)
    assert model_secrets == {"API_TOKEN"}
    exchange = Path(tempfile.mkdtemp(prefix="cs-exchange-", dir=os.environ["CS_HOME"]))
    work = Path(tempfile.mkdtemp(prefix="cs-work-", dir=os.environ["CS_HOME"]))
    env.update(PATH=os.environ["PATH"], HOME=os.environ.get("HOME", "/tmp"))
    env.update({k: v for k, v in os.environ.items() if k.startswith("CS_")})
    env["CS_EXCHANGE_DIR"] = str(exchange)
    env["CS_SECRETS_SOURCE"] = "pod"
    argv = [str(Path(sys.executable).parent / "prefect"), *flow["args"][1:]]
    assert argv[1:] == ["flow-run", "execute"]
    python = published_python("tests", "K8s_Hang")
    model_env.update(HOME=str(work), TMPDIR=str(work))
    model_argv = [python, "-I", str(CHILD_SCRIPT), "--wait-for"]
    model_argv += [str(exchange / "request.json"), str(exchange / "response.json"), "120"]
    assert model["command"][3:6] == [
        "--wait-for",
        "/cs/exchange/request.json",
        "/cs/exchange/response.json",
    ]

    async def submitted():  # what the worker does before it creates the Job
        async with get_client() as client:
            await propose_state(client, Pending(), flow_run_id=flow_run_id)

    anyio.run(submitted)
    model_log = log.with_suffix(".model.log")
    model_process = subprocess.Popen(
        model_argv,
        env=model_env,
        cwd=work,
        start_new_session=True,
        stdout=model_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    flow_process = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return flow_process, model_process


def published_python(owner: str, title: str) -> str:
    from prefect_cs.blocks.model_config import ModelConfig

    return ModelConfig.for_model(owner, title).published().python


def _stop(process: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_rendered_job_runs_a_simulation_to_success(hang_model, webapp):
    """The Job's command and env (secrets by reference, resolved at start) complete a simulation."""
    from prefect_cs.deployments.submit import submit_simulation

    task_id = str(uuid.uuid4())
    run = submit_simulation("tests", "K8s_Hang", adjustment={}, task_id=task_id, wait_seconds=0)
    log = Path(os.environ["CS_HOME"]) / f"job-{task_id}.log"
    process, model = job_process(run.id, log)
    try:
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert model.wait(timeout=300) == 0  # answered, then ended: the Job ends with the run
    finally:
        _stop(process)
        _stop(model)
    assert _state(run.id).is_completed(), _state(run.id)
    (body,) = _puts(webapp, task_id)
    assert body["status"] == "SUCCESS" and body["model_version"] == "0.3.0"
    assert SECRET_VALUE not in log.read_text()


def test_evicted_pod_reschedules_its_run(hang_model, webapp):
    """Eviction = SIGTERM to the Job's container: the run goes back to Scheduled, not lost.

    The rendered Job's own command and environment run here as a process (the
    image's platform prefect replaced by this one); SIGTERM arrives while the
    model is running, as when a node is drained.
    """
    import signal

    from prefect_cs.deployments.submit import submit_simulation

    task_id = str(uuid.uuid4())
    run = submit_simulation(
        "tests",
        "K8s_Hang",
        adjustment={"control": {"behavior": [{"value": "hang"}]}},
        task_id=task_id,
        wait_seconds=0,
    )
    process, model = job_process(run.id, Path(os.environ["CS_HOME"]) / f"evict-{task_id}.log")
    try:
        # Conditions, not fixed times: a loaded CI machine took over 60 s to get here.
        assert _wait_for(lambda: _state(run.id).is_running(), 600), _state(run.id)
        request = Path(model.args[4])  # the flow asked: the model child is now hanging
        assert _wait_for(request.exists, 600), f"the flow never wrote {request}"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
    finally:
        _stop(process)
        _stop(model)
    state = _state(run.id)
    assert state.is_scheduled(), (state.name, state.message)
    assert _puts(webapp, task_id) == []  # it will run again: no FAIL for an eviction


# ---- the pod's exchange: the flow's side against child.py --wait-for -----------------------


def wait_for_child(python: str, exchange: Path, seconds: float = 60) -> subprocess.Popen:
    """The model container's command, as a local process of the model's venv."""
    from prefect_cs.runtime.model_process import CHILD_SCRIPT

    argv = [python, "-I", str(CHILD_SCRIPT), "--wait-for"]
    argv += [str(exchange / "request.json"), str(exchange / "response.json"), str(seconds)]
    return subprocess.Popen(argv, cwd=exchange, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_pod_exchange_asks_once_and_reads_the_answer(misbehaving, tmp_path):
    from prefect_cs.runtime.pod_exchange import call_in_pod, release

    python = published_python("tests", "Misbehaving")
    child = wait_for_child(python, tmp_path)
    call = call_in_pod(tmp_path, "get_version", [], timeout=60)
    assert call.ok and call.result == "0.3.0" and call.seconds > 0, call
    assert child.wait(timeout=30) == 0
    request = json.loads((tmp_path / "request.json").read_text())
    assert request == {"function": "get_version", "args": [], "with_version": True}  # no env
    assert not list(tmp_path.glob("*.part"))  # written whole, then renamed
    assert release(tmp_path) is False  # the model was called: nothing to release
    again = call_in_pod(tmp_path, "get_version", [], timeout=5)
    assert not again.ok and "already asked once" in again.error


def test_pod_exchange_releases_a_model_container_never_asked(misbehaving, tmp_path):
    from prefect_cs.runtime.pod_exchange import release

    child = wait_for_child(published_python("tests", "Misbehaving"), tmp_path)
    assert release(tmp_path) is True
    assert child.wait(timeout=30) == 0 and not (tmp_path / "response.json").exists()
    assert release(None) is False and release(tmp_path / "absent") is False


def test_pod_exchange_fails_a_model_that_never_answers(tmp_path, monkeypatch):
    from prefect_cs.runtime import pod_exchange

    monkeypatch.setattr(pod_exchange, "ANSWER_GRACE_SECONDS", 0)
    call = pod_exchange.call_in_pod(tmp_path, "run_model", [{}, {}], timeout=0.5)
    assert not call.ok and "time limit of 0.5 seconds" in call.error


def test_pod_exchange_never_follows_a_link_the_model_planted(tmp_path):
    from prefect_cs.runtime.pod_exchange import call_in_pod

    secret = tmp_path / "platform-secret"
    secret.write_text(json.dumps({"ok": True, "result": "stolen", "seconds": 1}))
    (tmp_path / "exchange").mkdir()
    (tmp_path / "exchange" / "response.json").symlink_to(secret)
    call = call_in_pod(tmp_path / "exchange", "run_model", [{}, {}], timeout=5)
    assert not call.ok and call.result is None and "could not be read safely" in call.error


def test_kubernetes_call_model_outside_a_pod_names_the_fix(monkeypatch):
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.tiers.kubernetes import KubernetesTier

    monkeypatch.delenv("CS_EXCHANGE_DIR", raising=False)
    model = ModelConfig(owner="o", title="t", repo_url="/x")
    entry = PublishedTag(tag="v1", tier="kubernetes", python="/p", image="r/o_t@sha256:" + "0" * 64)
    call = KubernetesTier().call_model(model, entry, "run_model", [{}, {}], {"S": "v"})
    assert not call.ok and "CS_EXCHANGE_DIR" in call.error
    assert KubernetesTier.inputs_on_shared_worker is False


def test_job_variables_need_the_platform_image_by_digest(monkeypatch):
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.core.errors import StepFailed
    from prefect_cs.tiers.kubernetes import KubernetesTier

    model = ModelConfig(owner="o", title="t", repo_url="/x")
    entry = PublishedTag(tag="v1", tier="kubernetes", python="/p", image="r/o_t@sha256:" + "0" * 64)
    monkeypatch.delenv("CS_PLATFORM_IMAGE")
    with pytest.raises(StepFailed, match="prefect-cs k8s platform-image"):
        KubernetesTier().job_variables(model, entry)
    monkeypatch.setenv("CS_PLATFORM_IMAGE", "r/prefect-cs-platform:0.1.0")
    with pytest.raises(StepFailed, match="by digest"):
        KubernetesTier().job_variables(model, entry)


def test_warm_pod_talks_to_a_serve_paths_zygote(misbehaving, tmp_path, monkeypatch):
    """The inputs worker's side of a warm model container, against child.py --serve-paths of the
    model's venv over named pipes in a shared folder: answers, a call over its time is stopped
    by the zygote (the platform cannot reach across containers), and the next call works."""
    from prefect_cs.runtime import pod_exchange
    from prefect_cs.runtime.model_process import CHILD_SCRIPT

    pod_exchange.make_pipes(tmp_path)
    python = published_python("tests", "Misbehaving")
    argv = [python, "-I", str(CHILD_SCRIPT), "--serve-paths"]
    argv += [str(tmp_path / "in"), str(tmp_path / "out")]
    zygote = subprocess.Popen(argv, cwd=tmp_path, start_new_session=True)
    warm = pod_exchange.WarmPod(tmp_path, fingerprint="f1")
    try:
        call = warm.call("get_version", [], timeout=30)
        assert call.ok and call.result == "0.3.0", call
        hang = {"control": {"behavior": [{"value": "hang"}]}}
        slow = warm.call("run_model", [{}, hang], timeout=2)
        assert not slow.ok and "did not answer within 2 seconds" in slow.error, slow
        again = warm.call("get_version", [], timeout=30)
        assert again.ok and again.result == "0.3.0"
    finally:
        warm.stop()
        assert zygote.wait(timeout=30) == 0  # the end of its requests: it exits
    none = pod_exchange.WarmPod(None).call("get_version", [], timeout=1)
    assert not none.ok and "CS_EXCHANGE_DIR" in none.error
