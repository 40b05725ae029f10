"""The Kubernetes tier: the Docker tier's image, run as one Kubernetes Job per simulation.

Building, testing and pushing the image is the Docker tier's work, inherited
unchanged. What is this tier's own is its pool and its job variables: the
model's resources, time limit, labels and secret references, which the work
pool's base job template (work_pools/kubernetes.json) turns into a Job.

The Job's pod has two containers, so the flow never runs in the model's image (which the
model's build wrote, as root): `prefect-job`, the flow, in the platform's own image
(tiers/platform_image.py) with the Prefect login and no model secret; `model`, the model's
image as uid 10001 with a read-only root, no capabilities, the model config's CPU, memory and
disk, and only its declared secrets. They share one emptyDir, `exchange`: the flow writes the
request there and reads the answer (runtime/pod_exchange.py); an init container of the
platform image copies the child runner into `runtime`, which the model mounts read-only.
"""

from __future__ import annotations

from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import StepFailed
from prefect_cs.core.names import (
    check_secret_name,
    label_value,
    model_code_secrets,
    secret_env_name,
)
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.runtime.pod_exchange import (
    EXCHANGE,
    REQUEST,
    RESPONSE,
    RUNNER,
    WORK,
    WarmPod,
    call_in_pod,
)
from prefect_cs.tiers.base import JobVariables
from prefect_cs.tiers.docker import MODEL_PYTHON, DockerTier

# activeDeadlineSeconds counts from the Job's start, before the pod is even
# scheduled: leave room for a node scale-up from zero (~3-4 min on GKE/EKS), the
# image pull, and, after the model's own time limit, storing outputs and
# notifying the web app with retries.
STARTUP_MARGIN_SECONDS = 300
NOTIFY_MARGIN_SECONDS = 120
DEADLINE_MARGIN_SECONDS = STARTUP_MARGIN_SECONDS + NOTIFY_MARGIN_SECONDS
FINISHED_JOB_TTL_SECONDS = 600
LABEL_PREFIX = "cs.compute.studio"


def cpu_quantity(cpu: float) -> str:
    """1.0 -> "1", 0.5 -> "500m": the forms `kubectl describe` shows."""
    millis = round(cpu * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def model_secret_name(model: ModelConfig) -> str:
    """The Kubernetes Secret that holds a model's declared secrets (rendered by
    `prefect-cs k8s render`)."""
    return f"cs-model-{model.slug}"[:253]


def model_labels(model: ModelConfig, tag: str | None = None) -> dict[str, str]:
    labels = {
        f"{LABEL_PREFIX}/owner": label_value(model.owner),
        f"{LABEL_PREFIX}/title": label_value(model.title),
    }
    if tag:
        labels[f"{LABEL_PREFIX}/tag"] = label_value(tag)
    return {k: v for k, v in labels.items() if v}


def secret_env(model: ModelConfig) -> list[dict[str, Any]]:
    """One env entry per declared secret, by reference to the model's Secret: never a value.
    Under the model's own names: only the model container gets them (the flow holds none)."""
    return [
        {
            "name": check_secret_name(name),
            "valueFrom": {"secretKeyRef": {"name": model_secret_name(model), "key": name}},
        }
        for name in model_code_secrets(model.secrets)  # never the webhook key
    ]


def mask_env(model: ModelConfig) -> list[dict[str, Any]]:
    """The flow container's references to the same secrets, as `CS_SECRET_<name>`: it reads them
    only to mask them in what leaves the Job (runtime/environment.py `secrets_to_mask`);
    under those names they are never what the model call is given."""
    return [
        {
            "name": secret_env_name(check_secret_name(name)),
            "valueFrom": {"secretKeyRef": {"name": model_secret_name(model), "key": name}},
        }
        for name in model_code_secrets(model.secrets)
    ]


def model_env(model: ModelConfig) -> list[dict[str, Any]]:
    """The model container's whole environment: a home and temp folder of its own (the `work`
    emptyDir), the model venv first on PATH, thread counts matched to its CPUs (as
    runtime/environment.model_env gives a model call on the other tiers), its secrets."""
    threads = str(max(1, int(model.cpu)))
    plain = {
        "HOME": WORK,
        "TMPDIR": WORK,
        "PATH": f"{MODEL_PYTHON.rsplit('/', 1)[0]}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "MALLOC_ARENA_MAX": "2",
    }
    return [{"name": k, "value": v} for k, v in plain.items()] + secret_env(model)


def model_command(request_wait_seconds: int) -> list[str]:
    """The model container: wait (bounded) for the flow's request, answer it, exit."""
    return [
        MODEL_PYTHON,
        "-I",
        RUNNER,
        "--wait-for",
        f"{EXCHANGE}/{REQUEST}",
        f"{EXCHANGE}/{RESPONSE}",
        str(request_wait_seconds),
    ]


def resources(model: ModelConfig) -> dict[str, str]:
    """CPU limit = request (a simulation gets what it asked for); memory limit = request x
    factor."""
    return {
        "cpu_request": cpu_quantity(model.cpu),
        "cpu_limit": cpu_quantity(model.cpu),
        "memory_request": f"{model.memory_mib}Mi",
        "memory_limit": f"{model.memory_limit_mib}Mi",
    }


def task_job_variables(model: ModelConfig, task_id: str) -> dict[str, Any]:
    """Per-run job variables the submitter adds: the task id label, on the Kubernetes tier only.

    A flow run's parameters are not visible to the base job template, so the
    task id travels as a job variable of the run (`run_deployment(job_variables=…)`).
    The deployment's pool follows the promoted tag (deploy_model), so its tier
    decides; other tiers' pools do not declare the variable, so nothing is sent there.
    """
    try:
        tier = model.published().tier
    except LookupError:
        return {}
    return {"task_id": label_value(task_id)} if tier == "kubernetes" else {}


class KubernetesJobVariables(JobVariables):
    """What a model's deployment sets in work_pools/kubernetes.json. The pool sets the rest
    (namespace, service account, node selector, tolerations, pull secrets, env); task_id is
    set per flow run by the submitter (task_job_variables)."""

    image: str
    platform_image: str
    model_command: list[str]
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    disk: str
    internet: str
    active_deadline_seconds: int
    finished_job_ttl: int
    backoff_limit: int
    labels: dict[str, str]
    model_env: list[dict[str, Any]]
    mask_env: list[dict[str, Any]]


class KubernetesTier(DockerTier):
    """The Docker tier's image and publish steps; a two-container Kubernetes Job per simulation."""

    name = "kubernetes"
    pool_type = "kubernetes"
    pool_setting = "kubernetes_pool"
    variables_model = KubernetesJobVariables
    inputs_on_shared_worker = False  # each model's inputs server, beside its model container

    def start_app(self, model: ModelConfig, entry: PublishedTag, deployment_name: str) -> Any:
        """Not from here: a deployment on Kubernetes is a Deployment + Service + Ingress
        (infra/kubernetes_apps.py), which the front door does not create yet."""
        raise StepFailed(
            f"{model.owner}/{model.title}@{entry.tag} is published on the kubernetes tier, whose"
            " app deployments are rendered (infra/kubernetes_apps.app_manifests) but not started"
            " by the front door yet: publish it with CS_TIER=docker or local to serve it"
        )

    def smoke_server(self, model: ModelConfig, entry: PublishedTag) -> Any:
        """Publish's smoke start runs the image on Docker, as the tests run the Job's pod."""
        return DockerTier.start_app(self, model, entry, "smoke-start")

    def variables(self, model: ModelConfig, entry: PublishedTag) -> KubernetesJobVariables:
        """What the simulate deployment tells work_pools/kubernetes.json for this model and tag."""
        from prefect_cs.tiers.platform_image import configured_platform_image

        return KubernetesJobVariables(
            image=self.image_of(model, entry),
            platform_image=configured_platform_image(),
            model_command=model_command(STARTUP_MARGIN_SECONDS),
            **resources(model),
            disk=f"{model.disk_mib}Mi",
            internet="true" if model.internet else "false",
            active_deadline_seconds=model.time_limit + DEADLINE_MARGIN_SECONDS,
            finished_job_ttl=FINISHED_JOB_TTL_SECONDS,
            backoff_limit=0,
            labels=model_labels(model, entry.tag),
            model_env=model_env(model),
            mask_env=mask_env(model),
        )

    def call_model(
        self,
        model: ModelConfig,
        entry: PublishedTag,
        function: str,
        args: list[Any],
        env: dict[str, str],
    ) -> ModelCall:
        """The request to the pod's model container, through the shared `exchange` emptyDir.
        `env` is not sent: the model container's environment is in the pod spec (model_env),
        and the exchange file must never hold a secret."""
        from prefect_cs.core.settings import get_settings

        exchange = get_settings().exchange_dir
        if exchange is None:
            return ModelCall(
                ok=False,
                error="this flow is not running in a Kubernetes Job's flow container (no"
                " CS_EXCHANGE_DIR): the kubernetes tier's model runs in the Job's `model`"
                " container; start the run through the kubernetes work pool",
            )
        return call_in_pod(exchange, function, args, timeout=model.time_limit)

    def start_early(self, model: ModelConfig, entry: PublishedTag, env: dict[str, str]) -> None:
        """Nothing to start: the pod's model container starts with the pod and imports the
        model while the flow container prepares the request (child.py --wait-for)."""
        return None

    def warm_model(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str], fingerprint: str
    ) -> WarmPod:
        """The model container of this model's inputs server pod, over its named pipes (the
        inputs worker runs beside it, in the platform image; `env` is in the pod spec)."""
        from prefect_cs.core.settings import get_settings

        return WarmPod(get_settings().exchange_dir, fingerprint)
