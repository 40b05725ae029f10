"""The Kubernetes tier: the Docker tier's image, run as one Kubernetes Job per simulation.

Building, testing and pushing the image is the Docker tier's work, inherited
unchanged. What is this tier's own is its pool and its job variables: the
model's resources, time limit, labels and secret references, which the work
pool's base job template (work_pools/kubernetes.json) turns into a Job.
"""

from __future__ import annotations

from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.names import label_value, model_code_secrets, secret_env_name
from prefect_cs.tiers.base import JobVariables
from prefect_cs.tiers.docker import DockerTier

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
    """The Kubernetes Secret that holds a model's declared secrets (rendered by `prefect-cs k8s render`)."""
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
    """One env entry per declared secret, by reference to the model's Secret: never a value."""
    return [
        {
            "name": secret_env_name(name),
            "valueFrom": {"secretKeyRef": {"name": model_secret_name(model), "key": name}},
        }
        for name in model_code_secrets(model.secrets)  # never the webhook key
    ]


def resources(model: ModelConfig) -> dict[str, str]:
    """CPU limit = request (a simulation gets what it asked for); memory limit = request x factor."""
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
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    active_deadline_seconds: int
    finished_job_ttl: int
    backoff_limit: int
    labels: dict[str, str]
    secret_env: list[dict[str, Any]]


class KubernetesTier(DockerTier):
    """The Docker tier's image and publish steps; a Kubernetes Job per simulation."""

    name = "kubernetes"
    pool_type = "kubernetes"
    pool_setting = "kubernetes_pool"
    variables_model = KubernetesJobVariables
    inputs_on_shared_worker = False  # each model's inputs server runs in the cluster

    def variables(self, model: ModelConfig, entry: PublishedTag) -> KubernetesJobVariables:
        """What the simulate deployment tells work_pools/kubernetes.json for this model and tag."""
        return KubernetesJobVariables(
            image=self.image_of(model, entry),
            **resources(model),
            active_deadline_seconds=model.time_limit + DEADLINE_MARGIN_SECONDS,
            finished_job_ttl=FINISHED_JOB_TTL_SECONDS,
            backoff_limit=0,
            labels=model_labels(model, entry.tag),
            secret_env=secret_env(model),
        )
