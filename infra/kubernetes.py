"""Kubernetes manifests: what the operator applies, and the Job the worker would create.

Two kinds of output:
- operator manifests (`prefect-cs k8s render | kubectl apply -f -`): namespaces,
  the Prefect worker's RBAC, the model jobs' token-less service account, the
  registry's pull Secret (from the CS_REGISTRY_BLOCK login; Jobs and inputs servers
  name it in `imagePullSecrets`), each model's Secret and long-running inputs
  server. These Secrets are the one place secret values appear (base64, in the
  operator's output only, never logged).
- `render_job`: a flow run's Job exactly as prefect-kubernetes' worker builds it
  (its own `resolve_for_flow_run`), for tests and for `prefect-cs k8s job`.

The Prefect API always asks for a login; every container here gets it as a
`secretKeyRef` to a Secret the operator creates (`prefect-auth`, key
`auth-string`, in both namespaces; docs/production.md), never as a value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import InvalidValue, NotFound
from prefect_cs.tiers.kubernetes import LABEL_PREFIX, mask_env, model_labels, model_secret_name
from prefect_cs.work_pools.pools import base_job_template

KUBERNETES_VERSION = "1.37.0"
WORKER_NAMESPACE = "prefect"
WORKER_SERVICE_ACCOUNT = "prefect-worker"
# The Secrets (name, key) the API credentials come from, unless the worker's own
# PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_{AUTH_STRING,KEY}_SECRET_{NAME,KEY} say otherwise.
API_AUTH_SECRET = ("prefect-auth", "auth-string")
API_KEY_SECRET = ("prefect-api-key", "api-key")
Manifest = dict[str, Any]


def secret_ref(variable: str, secret: tuple[str, str]) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret[0], "key": secret[1]}}}


def api_login_env() -> list[dict[str, Any]]:
    """The API login of a platform container (watcher, inputs server): a reference, never a
    value."""
    return [
        secret_ref("PREFECT_API_AUTH_STRING", api_credential_secrets()["PREFECT_API_AUTH_STRING"])
    ]


def api_credential_secrets() -> dict[str, tuple[str, str]]:
    """Where a Job's API credentials come from: the worker's prefect-kubernetes settings, else
    ours."""
    from prefect_kubernetes.settings import KubernetesSettings

    worker = KubernetesSettings().worker
    return {
        "PREFECT_API_AUTH_STRING": (
            worker.api_auth_string_secret_name or API_AUTH_SECRET[0],
            worker.api_auth_string_secret_key or API_AUTH_SECRET[1],
        ),
        "PREFECT_API_KEY": (
            worker.api_key_secret_name or API_KEY_SECRET[0],
            worker.api_key_secret_key or API_KEY_SECRET[1],
        ),
    }


def credentials_by_reference(manifest: Manifest) -> Manifest:
    """Replace the API credentials the worker copied into the Job by secretKeyRefs.

    What the worker's `_create_job` does when its *_SECRET_NAME settings are set
    (docs/production.md sets them); done here too so that a rendered Job never
    holds a credential, whatever the rendering process was started with.
    """
    secrets = api_credential_secrets()
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        secret_ref(e["name"], secrets[e["name"]])
        if e.get("name") in secrets and "value" in e
        else e
        for e in container.get("env", [])
    ]
    return manifest


def template_default(variable: str) -> Any:
    """A default of work_pools/kubernetes.json: the template is the one source of these names."""
    return base_job_template("kubernetes")["variables"]["properties"][variable]["default"]


def jobs_namespace() -> str:
    return template_default("namespace")


def namespace(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "prefect-cs"}},
    }


def worker_rbac(
    jobs_ns: str, worker_ns: str = WORKER_NAMESPACE, account: str = WORKER_SERVICE_ACCOUNT
) -> list[Manifest]:
    """What the Prefect worker may do in the jobs namespace, and nothing more.

    Jobs: create, watch and delete (cancellation deletes the Job, whose pods go
    with it). Pods and their logs: read, to report a crash. Events: read, for
    the observer's diagnoses. Secrets: read only (model Secrets are applied by
    the operator, never by the worker).
    """
    role = f"{account}-jobs"
    rules = [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {
            "apiGroups": ["", "events.k8s.io"],
            "resources": ["events"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": worker_ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role, "namespace": jobs_ns},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": jobs_ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": worker_ns}],
        },
    ]


def model_job_service_account(jobs_ns: str) -> Manifest:
    """Model code is untrusted: its pods run as an account with no role and no mounted token."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": template_default("service_account_name"), "namespace": jobs_ns},
        "automountServiceAccountToken": False,
    }


def registry_pull_secret(jobs_ns: str) -> Manifest | None:
    """The kubelet's login to the image registry: a `kubernetes.io/dockerconfigjson` Secret named
    as the pool's `image_pull_secrets` default (`cs-registry`), which every model Job and inputs
    server references by name. From the CS_REGISTRY_BLOCK block; None without one (a registry
    without auth, or a Secret the operator made). Model pods cannot read it: their service
    account has no role and no token."""
    from prefect_cs.core.settings import get_settings
    from prefect_cs.tiers.docker import resolve_registry

    names = [ref["name"] for ref in template_default("image_pull_secrets") or []]
    if not get_settings().registry_block or not names:
        return None
    registry = resolve_registry()
    login = f"{registry.username}:{registry.password}"
    config = {
        "auths": {
            registry.host: {
                "username": registry.username,
                "password": registry.password,
                "auth": base64.b64encode(login.encode()).decode(),
            }
        }
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": names[0], "namespace": jobs_ns},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def model_secret(model: ModelConfig, values: dict[str, str], jobs_ns: str) -> Manifest:
    """The model's declared secrets, resolved from the backend; what its secretKeyRefs point at."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": model_secret_name(model),
            "namespace": jobs_ns,
            "labels": model_labels(model),
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }


MODEL_SECURITY = {
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
PLATFORM_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
INPUTS_INIT = (
    "import os, shutil\n"
    "shutil.copy('/opt/cs/runtime/child.py', '/cs/runtime/child.py')\n"
    "for name in ('in', 'out'):\n"
    "    os.mkfifo('/cs/exchange/' + name)\n"
    "    os.chmod('/cs/exchange/' + name, 0o666)\n"
)


def inputs_server(
    model: ModelConfig, entry: PublishedTag, jobs_ns: str, api_url: str, platform_image: str
) -> Manifest:
    """The model's inputs task worker (version, defaults, parse), always on, split like a Job.

    `inputs`: the task worker, in the platform's image, with the API login and no model
    secret. `model`: the model's image as uid 10001 (read-only, no capabilities), its warm
    zygote (child.py `--serve-paths … --reap --empty /cs/work`: each call a fresh fork, what it
    left killed and its work folder emptied after it) with the model's secrets, limits and work
    folder. They share the `exchange` emptyDir, where the init container (platform image)
    makes the two named pipes and copies the runner into `runtime` (read-only to the model).
    It stays off the autoscaled model pool (no node selector) so that pool can scale to zero;
    CPU request is small (the calls are light), the limits are the model's. The pod has the
    simulation pods' role label: their NetworkPolicy holds it too.
    """
    from prefect_cs.runtime.pod_exchange import EXCHANGE, PIPE_IN, PIPE_OUT, RUNNER, WORK
    from prefect_cs.tiers.docker import MODEL_PYTHON
    from prefect_cs.tiers.kubernetes import model_env, resources
    from prefect_cs.tiers.platform_image import PLATFORM_PYTHON

    labels = {**model_labels(model, entry.tag), "app.kubernetes.io/component": "inputs"}
    selector = {k: v for k, v in labels.items() if not k.endswith("/tag")}
    pod_labels = {
        **labels,
        f"{LABEL_PREFIX}/role": "job",
        f"{LABEL_PREFIX}/internet": "true" if model.internet else "false",
    }
    res = resources(model)
    pull = template_default("image_pull_policy")
    exchange = {"name": "exchange", "mountPath": EXCHANGE}
    runtime = {"name": "runtime", "mountPath": "/cs/runtime"}
    init = {
        "name": "runtime",
        "image": platform_image,
        "imagePullPolicy": pull,
        "command": [PLATFORM_PYTHON, "-I", "-c", INPUTS_INIT],
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"cpu": "200m", "memory": "64Mi"},
        },
        "securityContext": MODEL_SECURITY,
        "volumeMounts": [exchange, runtime],
    }
    worker = {
        "name": "inputs",
        "image": platform_image,
        "imagePullPolicy": pull,
        "command": [PLATFORM_PYTHON, "-m", "prefect_cs.services.inputs_server"],
        "env": [
            {"name": "PREFECT_API_URL", "value": api_url},
            {"name": "CS_SECRETS_SOURCE", "value": "pod"},
            {"name": "CS_EXCHANGE_DIR", "value": EXCHANGE},
            {"name": "CS_INPUTS_MODEL", "value": f"{model.owner}/{model.title}"},
            *api_login_env(),
            *mask_env(model),  # to mask the model's secrets in its answers, never to give them
        ],
        "resources": {
            "requests": {"cpu": "50m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": PLATFORM_SECURITY,
        "volumeMounts": [exchange],
    }
    model_container = {
        "name": "model",
        "image": entry.image,
        "imagePullPolicy": pull,
        "command": [
            MODEL_PYTHON,
            "-I",
            RUNNER,
            "--serve-paths",
            f"{EXCHANGE}/{PIPE_IN}",
            f"{EXCHANGE}/{PIPE_OUT}",
            "--reap",
            "--empty",
            WORK,
        ],
        "workingDir": WORK,
        "env": model_env(model),
        "resources": {
            "requests": {"cpu": "100m", "memory": res["memory_request"]},
            "limits": {"cpu": res["cpu_limit"], "memory": res["memory_limit"]},
        },
        "securityContext": MODEL_SECURITY,
        "volumeMounts": [
            exchange,
            {**runtime, "readOnly": True},
            {"name": "work", "mountPath": WORK},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"cs-inputs-{model.slug}"[:63],
            "namespace": jobs_ns,
            "labels": labels,
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": template_default("service_account_name"),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "imagePullSecrets": template_default("image_pull_secrets"),
                    "initContainers": [init],
                    "containers": [worker, model_container],
                    "volumes": [
                        {"name": "exchange", "emptyDir": {"sizeLimit": "64Mi"}},
                        {"name": "runtime", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "work", "emptyDir": {"sizeLimit": f"{model.disk_mib}Mi"}},
                    ],
                },
            },
        },
    }


def watcher(image: str, api_url: str, worker_ns: str = WORKER_NAMESPACE) -> Manifest:
    """`prefect-cs watch` beside the worker: reports runs Kubernetes lost as FAIL.

    It runs the platform image (not a model's): it reads the web app block, so it
    holds platform credentials and never runs model code. It needs no Kubernetes
    API access at all (it reads states and logs from Prefect), so no token is mounted.
    """
    labels = {"app.kubernetes.io/part-of": "prefect-cs", "app.kubernetes.io/component": "watcher"}
    container = {
        "name": "watcher",
        "image": image,
        "command": [
            "prefect-cs",
            "watch",
            "--pending-timeout",
            str(template_default("pod_watch_timeout_seconds")),
        ],
        "env": [{"name": "PREFECT_API_URL", "value": api_url}, *api_login_env()],
        "resources": {
            "requests": {"cpu": "50m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cs-k8s-watch", "namespace": worker_ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"automountServiceAccountToken": False, "containers": [container]},
            },
        },
    }


PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
]
ROLE_LABEL = f"{LABEL_PREFIX}/role"
INTERNET_LABEL = f"{LABEL_PREFIX}/internet"


def _destination(url: str) -> tuple[dict[str, Any], int]:
    """(a NetworkPolicy peer, the port) for a service the flow calls. An in-cluster name
    (`svc.namespace[.svc…]`) is its namespace; any other host may be anywhere outside the
    cluster, and NetworkPolicy cannot name hosts: every public address, no private one."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    port = parts.port or {"https": 443, "rediss": 6379, "redis": 6379}.get(parts.scheme, 80)
    labels = (parts.hostname or "").split(".")
    if len(labels) >= 2 and (len(labels) == 2 or labels[2] == "svc"):
        selector = {"matchLabels": {"kubernetes.io/metadata.name": labels[1]}}
        return {"namespaceSelector": selector}, port
    return {"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}, port


def job_network_policies(jobs_ns: str, flow_services: Iterable[str]) -> list[Manifest]:
    """What simulation pods (label cs.compute.studio/role=job) may reach.

    A NetworkPolicy selects pods, not containers: the model container shares the pod's network
    with the flow container, so whatever the flow must reach (the Prefect API, Redis, the web
    app, the outputs bucket: `flow_services`) the model can reach too. What keeps it out there
    is that it holds none of the credentials (the API and Redis ask for a login, the web app for
    its token); the policy keeps it off everything else (other pods, the node's and the cloud's
    metadata addresses, the internet). Nothing may connect in. A model with `internet: true`
    (label cs.compute.studio/internet=true) also gets every public address, no private one.
    """
    rules: list[dict[str, Any]] = [
        {  # DNS, at the cluster's resolver
            "to": [
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
    ]
    for url in dict.fromkeys(flow_services):
        peer, port = _destination(url)
        rules.append({"to": [peer], "ports": [{"protocol": "TCP", "port": port}]})
    jobs = {"matchLabels": {ROLE_LABEL: "job"}}
    internet = {"matchLabels": {ROLE_LABEL: "job", INTERNET_LABEL: "true"}}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "cs-model-jobs", "namespace": jobs_ns},
            "spec": {
                "podSelector": jobs,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": rules,
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "cs-model-jobs-internet", "namespace": jobs_ns},
            "spec": {
                "podSelector": internet,
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}]}],
            },
        },
    ]


def flow_services(api_url: str, webapp_url: str | None = None) -> list[str]:
    """Where a Job's flow container connects: the API, Redis when configured, the web app (the
    CLI passes its block's URL), the outputs bucket (https on a public address)."""
    from prefect_cs.core.settings import get_settings

    services = [api_url]
    redis = get_settings().redis
    if redis.url or redis.host:
        services.append(redis.url or f"redis://{redis.host}:{redis.port or 6379}")
    if webapp_url:
        services.append(webapp_url)
    services.append("https://storage.googleapis.com")
    return services


def kubernetes_entry(model: ModelConfig) -> PublishedTag | None:
    """The promoted tag when it runs on Kubernetes; None for models on other tiers."""
    try:
        entry = model.published()
    except LookupError:
        return None
    return entry if entry.tier == "kubernetes" and entry.image else None


def operator_manifests(
    models: Iterable[ModelConfig],
    api_url: str,
    jobs_ns: str | None = None,
    worker_ns: str = WORKER_NAMESPACE,
    with_secrets: bool = True,
    platform_image: str | None = None,
    webapp_url: str | None = None,
) -> list[Manifest]:
    """Everything the operator applies, in apply order (namespaces first). webapp_url: where
    the Jobs' flows notify the web app (the simulation pods' NetworkPolicy lets them reach it).
    The apps' front door is infra/kubernetes_front_door.py's (`k8s render --apps-public-url`)."""
    from prefect_cs.security.secrets import model_secret_env
    from prefect_cs.tiers.platform_image import configured_platform_image

    jobs_ns = jobs_ns or jobs_namespace()
    manifests = [namespace(n) for n in dict.fromkeys([worker_ns, jobs_ns])]
    manifests += worker_rbac(jobs_ns, worker_ns)
    manifests.append(model_job_service_account(jobs_ns))
    manifests += job_network_policies(jobs_ns, flow_services(api_url, webapp_url))
    if with_secrets and (pull_secret := registry_pull_secret(jobs_ns)):
        manifests.append(pull_secret)
    if platform_image:
        manifests.append(watcher(platform_image, api_url, worker_ns))
    for model in models:
        if with_secrets and model.secrets:
            values = model_secret_env(model.owner, model.title, model.secrets)
            manifests.append(model_secret(model, values, jobs_ns))
        if entry := kubernetes_entry(model):
            image = platform_image or configured_platform_image()
            manifests.append(inputs_server(model, entry, jobs_ns, api_url, image))
    return manifests


async def render_job(flow_run_id: UUID, worker_name: str = "prefect-cs-render") -> Manifest:
    """The Job prefect-kubernetes' worker would create for this flow run, without a cluster.

    Same code path as the worker: `resolve_for_flow_run` merges the deployment's
    and the run's job variables over the pool's base job template, then
    `prepare_for_flow_run` adds the worker's environment and Prefect's labels.
    Run it with the worker's (minimal) environment: it copies this process's
    PREFECT_* settings into the Job, as the worker does; the API credentials
    among them become secretKeyRefs, as the worker configured by docs/production.md makes them.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async with get_client() as client:
        try:
            flow_run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise NotFound(
                f"no flow run {flow_run_id} on this server: give the id of a simulate run"
                " (`prefect flow-run ls`), with PREFECT_API_URL set to the platform's server"
            ) from None
        if flow_run.deployment_id is None:
            raise NotFound(f"flow run {flow_run_id} has no deployment: nothing to render")
        deployment = await client.read_deployment(flow_run.deployment_id)
        pool = await client.read_work_pool(deployment.work_pool_name)
        if pool.type != "kubernetes":
            raise InvalidValue(
                f"flow run {flow_run_id} is on work pool {pool.name!r} of type {pool.type!r}:"
                " only kubernetes pools create Jobs (deploy the model with CS_TIER=kubernetes)"
            )
        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            flow_run, client=client, work_pool=pool, worker_name=worker_name, deployment=deployment
        )
    return credentials_by_reference(config.job_manifest)
