"""The interactive apps' front door on Kubernetes: a Deployment, its Service, its NetworkPolicy.

Why a module of its own: every app Ingress (infra/kubernetes_apps.py) sends its path to the
Service `cs-app-front-door`, and the app NetworkPolicy admits only the front door's pods, so
those two names and its labels must come from one place and the front door must exist for
any app to be reached. It is the platform's process `stack start` runs as `app-front-door`
(services/app_proxy.py), in the platform's image (tiers/platform_image.py), never a model's.

What it holds and how: the Prefect API login (it runs the app-start/stop flows) and the link
key that signs app links and cookies (CS_APPS_LINK_KEY; the cluster API must sign with the
same one), both by secretKeyRef to Secrets the operator creates, never by value. Confined as
a platform container with nothing to write but its emptyDirs: a uid of its own (not root, not
the models' 10001), read-only root, no privilege escalation, no capabilities, RuntimeDefault
seccomp, no service-account token (it creates no Kubernetes object yet). It lives in the
apps' namespace: the `cs-model-apps` policy admits it by pod labels within that namespace.
Its own NetworkPolicy: in, its port from anywhere (it is the public door, the Ingress
controller's namespace is the cluster's choice, and it checks every request's cookie); out,
DNS, the Prefect API and the app pods' port, nothing else.
Rendering only, like the apps' objects: tests validate it with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

from prefect_cs.core.errors import InvalidValue
from prefect_cs.infra.kubernetes import (
    ROLE_LABEL,
    Manifest,
    _destination,
    api_login_env,
    secret_ref,
    template_default,
)
from prefect_cs.infra.kubernetes_apps import APP_ROLE, FRONT_DOOR_LABELS, FRONT_DOOR_SERVICE
from prefect_cs.runtime.app_server import APP_PORT

FRONT_DOOR_PORT = 8795  # CS_APPS_PORT's default, inside its pod
FRONT_DOOR_UID = 10002  # the platform's, in this pod only: not root, not the models' 10001
LINK_KEY_SECRET = ("cs-app-link-key", "key")  # kubectl create secret generic … (docs)
HOME = "/cs/home"  # CS_HOME and PREFECT_HOME: an emptyDir (the root is read-only)
FRONT_DOOR_SECURITY = {
    "runAsUser": FRONT_DOOR_UID,
    "runAsGroup": FRONT_DOOR_UID,
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def front_door_env(api_url: str, public_url: str) -> list[dict[str, Any]]:
    """Its settings by value, its two secrets by reference only."""
    plain = {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": f"{HOME}/prefect",
        "CS_HOME": HOME,
        "HOME": HOME,
        "TMPDIR": "/tmp",  # noqa: S108 - the pod's own emptyDir
        "CS_APPS_HOST": "0.0.0.0",  # noqa: S104 - the pod's address: its Service's target
        "CS_APPS_PORT": str(FRONT_DOOR_PORT),
        "CS_APPS_PUBLIC_URL": public_url,
    }
    return [
        *({"name": k, "value": v} for k, v in plain.items()),
        *api_login_env(),
        secret_ref("CS_APPS_LINK_KEY", LINK_KEY_SECRET),
    ]


def front_door_container(platform_image: str, api_url: str, public_url: str) -> dict[str, Any]:
    """`stack start`'s `app-front-door` (stack_parts.app_front_door) in the platform's image."""
    from prefect_cs.tiers.platform_image import PLATFORM_PYTHON

    return {
        "name": "app-front-door",
        "image": platform_image,
        "imagePullPolicy": template_default("image_pull_policy"),
        "command": [PLATFORM_PYTHON, "-m", "prefect_cs.services.app_proxy"],
        "env": front_door_env(api_url, public_url),
        "ports": [{"name": "http", "containerPort": FRONT_DOOR_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/_cs/health", "port": FRONT_DOOR_PORT},
            "periodSeconds": 5,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": FRONT_DOOR_SECURITY,
        "volumeMounts": [
            {"name": "home", "mountPath": HOME},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
        ],
    }


def _metadata(namespace: str) -> dict[str, Any]:
    return {"name": FRONT_DOOR_SERVICE, "namespace": namespace, "labels": FRONT_DOOR_LABELS}


def front_door_deployment(
    platform_image: str, api_url: str, public_url: str, namespace: str
) -> Manifest:
    """One replica: the front door keeps its table of deployments in memory (README)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": FRONT_DOOR_LABELS},
            "template": {
                "metadata": {"labels": FRONT_DOOR_LABELS},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "imagePullSecrets": template_default("image_pull_secrets"),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [front_door_container(platform_image, api_url, public_url)],
                    "volumes": [
                        {"name": "home", "emptyDir": {"sizeLimit": "256Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def front_door_service(namespace: str) -> Manifest:
    """What every app Ingress's backend names (port 80)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": FRONT_DOOR_LABELS,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def front_door_network_policy(namespace: str, api_url: str) -> Manifest:
    """In: its port, from anyone. Out: DNS, the Prefect API, the app pods' port."""
    api_peer, api_port = _destination(api_url)
    dns = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    apps = {"podSelector": {"matchLabels": {ROLE_LABEL: APP_ROLE}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": FRONT_DOOR_SERVICE, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": FRONT_DOOR_LABELS},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": FRONT_DOOR_PORT}]}],
            "egress": [
                {
                    "to": [dns],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {"to": [api_peer], "ports": [{"protocol": "TCP", "port": api_port}]},
                {"to": [apps], "ports": [{"protocol": "TCP", "port": APP_PORT}]},
            ],
        },
    }


def front_door_manifests(
    platform_image: str, api_url: str, public_url: str, namespace: str
) -> list[Manifest]:
    """The front door and the apps' NetworkPolicies, in apply order."""
    from urllib.parse import urlsplit

    from prefect_cs.infra.kubernetes_apps import app_network_policies

    if not urlsplit(public_url).netloc:
        raise InvalidValue(
            f"apps public URL {public_url!r} is not a URL: pass --apps-public-url"
            " https://apps.example.org (the host the app Ingresses serve)"
        )
    if not platform_image:
        raise InvalidValue(
            "the front door runs the platform's image: pass --platform-image (or set"
            " CS_PLATFORM_IMAGE to what `prefect-cs k8s platform-image` prints)"
        )
    return [
        front_door_deployment(platform_image, api_url, public_url, namespace),
        front_door_service(namespace),
        front_door_network_policy(namespace, api_url),
        *app_network_policies(namespace),
    ]
