"""An interactive app deployment on Kubernetes: a Deployment, a Service and an Ingress.

Why a room of its own: C/S ran each Dash/Bokeh/Streamlit deployment as a Deployment + Service +
Traefik IngressRoute (workers/cs_workers/models/clients/server.py); this renders the same three
per (owner, title, deployment name, tag), confined like a simulation Job's model container
(infra/kubernetes.MODEL_SECURITY: uid 10001, read-only root, no privilege escalation, no
capabilities, RuntimeDefault seccomp; a service account with no role and no mounted token; the
model config's CPU and memory; its declared secrets by secretKeyRef, never by value).

What differs from C/S, and why:
- The Ingress is a standard `networking.k8s.io/v1` Ingress (validated against the Kubernetes
  schema like the Job; an IngressRoute is a CRD no schema here covers). It routes the
  deployment's path to the platform's front door Service (`cs-app-front-door`), not to the app:
  the front door checks the deployment's cookie (services/app_links.py) and counts use for the
  idle stop before it forwards to the app's Service. C/S's route went straight to the app, so
  anyone who knew a deployment's URL could open it.
- The app's NetworkPolicy admits connections to its port from the front door's pods only, and
  lets the app connect nowhere (no DNS, no platform service, no other pod) unless the model
  asks for the internet (`internet: true`: public addresses only, as for its Jobs).
- The server listens on the pod's address (it is the pod's own network namespace, as the
  sandbox's loopback is on the process tier), started with C/S's commands (runtime/app_server).
Rendering only: nothing here talks to a cluster (tests validate with kubernetes-validate).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.names import label_value
from prefect_cs.infra.kubernetes import (
    INTERNET_LABEL,
    MODEL_SECURITY,
    PRIVATE_RANGES,
    ROLE_LABEL,
    Manifest,
    template_default,
)
from prefect_cs.runtime.app_server import APP_PORT, server_args, url_prefix
from prefect_cs.tiers.kubernetes import LABEL_PREFIX, model_env, model_labels

FRONT_DOOR_SERVICE = "cs-app-front-door"
FRONT_DOOR_LABELS = {
    "app.kubernetes.io/part-of": "prefect-cs",
    "app.kubernetes.io/component": "app-front-door",
}
APP_ROLE = "app"


def app_name(owner: str, title: str, deployment_name: str) -> str:
    """A DNS label (63 characters at most) naming one deployment's objects: readable, and
    unique by a hash of the exact (owner, title, name), which case folding would not keep."""
    readable = re.sub(r"[^a-z0-9]+", "-", f"{owner}-{title}-{deployment_name}".lower())
    digest = hashlib.sha256(f"{owner}/{title}/{deployment_name}".encode()).hexdigest()[:10]
    return f"cs-app-{readable.strip('-')[:42].strip('-')}-{digest}"


def app_labels(model: ModelConfig, entry: PublishedTag, deployment_name: str) -> dict[str, str]:
    return {
        **model_labels(model, entry.tag),
        f"{LABEL_PREFIX}/deployment": label_value(deployment_name),
        "app.kubernetes.io/component": "app",
    }


def app_container(
    model: ModelConfig, entry: PublishedTag, deployment_name: str, origin: str
) -> dict[str, Any]:
    """The server as C/S started it, confined as a Job's model container is."""
    from prefect_cs.runtime.pod_exchange import WORK
    from prefect_cs.tiers.docker import MODEL_PYTHON, MODEL_SRC
    from prefect_cs.tiers.kubernetes import resources

    prefix = url_prefix(model.owner, model.title, deployment_name)
    args = server_args(
        model.tech,
        app_location=model.app_location,
        callable_name=model.callable_name,
        prefix=prefix,
        cpu=model.cpu,
        origin=origin,
        address="0.0.0.0",  # noqa: S104 - the pod's own network; its NetworkPolicy admits the front door only
    )
    env = [
        *model_env(model),
        {"name": "OWNER", "value": model.owner},
        {"name": "TITLE", "value": model.title},
        {"name": "URL_BASE_PATHNAME", "value": prefix},
    ]
    res = resources(model)
    return {
        "name": "app",
        "image": entry.image,
        "imagePullPolicy": template_default("image_pull_policy"),
        "command": [MODEL_PYTHON, "-m", *args],
        "workingDir": MODEL_SRC,
        "env": env,
        "ports": [{"name": "http", "containerPort": APP_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": prefix, "port": APP_PORT},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "resources": {
            "requests": {"cpu": res["cpu_request"], "memory": res["memory_request"]},
            "limits": {"cpu": res["cpu_limit"], "memory": res["memory_limit"]},
        },
        "securityContext": MODEL_SECURITY,
        "volumeMounts": [{"name": "work", "mountPath": WORK}],
    }


def app_deployment(
    model: ModelConfig, entry: PublishedTag, deployment_name: str, namespace: str, origin: str
) -> Manifest:
    name = app_name(model.owner, model.title, deployment_name)
    labels = app_labels(model, entry, deployment_name)
    pod_labels = {
        **labels,
        ROLE_LABEL: APP_ROLE,
        INTERNET_LABEL: "true" if model.internet else "false",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {f"{LABEL_PREFIX}/app": name}},
            "template": {
                "metadata": {"labels": {**pod_labels, f"{LABEL_PREFIX}/app": name}},
                "spec": {
                    "serviceAccountName": template_default("service_account_name"),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "imagePullSecrets": template_default("image_pull_secrets"),
                    "terminationGracePeriodSeconds": 10,
                    "containers": [app_container(model, entry, deployment_name, origin)],
                    "volumes": [{"name": "work", "emptyDir": {"sizeLimit": f"{model.disk_mib}Mi"}}],
                },
            },
        },
    }


def app_service(
    model: ModelConfig, entry: PublishedTag, deployment_name: str, namespace: str
) -> Manifest:
    """C/S's `svc`: the pod's port inside the cluster (ClusterIP), for the front door."""
    name = app_name(model.owner, model.title, deployment_name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": app_labels(model, entry, deployment_name),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {f"{LABEL_PREFIX}/app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": APP_PORT, "protocol": "TCP"}],
        },
    }


def app_ingress(
    model: ModelConfig,
    entry: PublishedTag,
    deployment_name: str,
    namespace: str,
    host: str,
    ingress_class: str = "traefik",
) -> Manifest:
    """C/S's `ingressroute`: the deployment's path on the public host, to the front door."""
    name = app_name(model.owner, model.title, deployment_name)
    backend = {"service": {"name": FRONT_DOOR_SERVICE, "port": {"number": 80}}}
    path = url_prefix(model.owner, model.title, deployment_name)
    rule: dict[str, Any] = {
        "http": {"paths": [{"path": path, "pathType": "Prefix", "backend": backend}]}
    }
    if host:
        rule["host"] = host
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": app_labels(model, entry, deployment_name),
        },
        "spec": {"ingressClassName": ingress_class, "rules": [rule]},
    }


def app_manifests(
    model: ModelConfig, entry: PublishedTag, deployment_name: str, namespace: str, public_url: str
) -> list[Manifest]:
    """The three objects of one deployment, in apply order. `public_url`: the front door as
    browsers reach it (the Ingress host; Bokeh's and Streamlit's allowed WebSocket origin)."""
    from urllib.parse import urlsplit

    if not model.interactive:
        raise ValueError(
            f"{model.owner}/{model.title} is tech {model.tech}: only dash, bokeh and streamlit"
            " apps have deployments (set tech in its model config)"
        )
    if not entry.image:
        raise ValueError(
            f"{model.owner}/{model.title}@{entry.tag} has no image (published on the"
            f" {entry.tier} tier): publish it with CS_TIER=kubernetes first"
        )
    parts = urlsplit(public_url)
    if not parts.netloc:
        raise ValueError(f"public_url {public_url!r} is not a URL: set CS_APPS_PUBLIC_URL")
    return [
        app_deployment(model, entry, deployment_name, namespace, parts.netloc),
        app_service(model, entry, deployment_name, namespace),
        app_ingress(model, entry, deployment_name, namespace, parts.hostname or ""),
    ]


def app_network_policies(namespace: str) -> list[Manifest]:
    """What app pods (role=app) may reach, and who may reach them: in, the front door's pods on
    the app's port; out, nothing (public addresses only for a model with internet: true)."""
    apps = {"matchLabels": {ROLE_LABEL: APP_ROLE}}
    internet = {"matchLabels": {ROLE_LABEL: APP_ROLE, INTERNET_LABEL: "true"}}
    door = {"podSelector": {"matchLabels": FRONT_DOOR_LABELS}}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "cs-model-apps", "namespace": namespace},
            "spec": {
                "podSelector": apps,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [door], "ports": [{"protocol": "TCP", "port": APP_PORT}]}],
                "egress": [],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "cs-model-apps-internet", "namespace": namespace},
            "spec": {
                "podSelector": internet,
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}]}],
            },
        },
    ]
