"""Interactive app deployments on Kubernetes, rendered and validated (no cluster here): one
Deployment + Service + Ingress per deployment, confined as a Job's model container, and the
NetworkPolicy that admits only the front door (infra/kubernetes_apps.py); the front door itself,
its Service and NetworkPolicy (infra/kubernetes_front_door.py), also as `prefect-cs k8s render`
gives them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import InvalidValue
from prefect_cs.infra.kubernetes_apps import app_manifests, app_name, app_network_policies
from prefect_cs.infra.kubernetes_front_door import front_door_manifests
from prefect_cs.testing.manifests import validate
from prefect_cs.tiers.kubernetes import model_secret_name

IMAGE = "registry.example:5000/cs/apps-viz:v2"
PUBLIC = "https://viz.example.org"
NS = "cs-models"
TECHS = {
    "dash": {"app_location": "cs_config.app", "callable_name": "server"},
    "bokeh": {"app_location": "app.py"},
    "streamlit": {"app_location": "app.py"},
}
LOCKED = {
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def model(tech: str, **extra) -> ModelConfig:
    return ModelConfig(
        owner="PSLmodels", title="Viz_App", repo_url="https://github.com/PSLmodels/viz",
        tech=tech, cpu=1.5, memory="768Mi", secrets=["MAPBOX_TOKEN"], **TECHS[tech], **extra,
    )  # fmt: skip


def entry(image: str | None = IMAGE) -> PublishedTag:
    return PublishedTag(tag="v2", tier="kubernetes", python="/opt/cs/model/bin/python", image=image)


@pytest.mark.parametrize("tech", list(TECHS))
def test_a_deployment_is_rendered_confined_and_valid(tech):
    manifests = app_manifests(model(tech), entry(), "alice-1a2b", NS, PUBLIC)
    assert validate(manifests) == 3  # strict, Kubernetes 1.37
    deployment, service, ingress = manifests
    assert [m["kind"] for m in manifests] == ["Deployment", "Service", "Ingress"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "cs-model-job"  # no role, no token
    assert pod["enableServiceLinks"] is False
    (app,) = pod["containers"]
    assert app["image"] == IMAGE
    assert app["securityContext"] == LOCKED
    assert app["resources"] == {
        "requests": {"cpu": "1500m", "memory": "768Mi"},
        "limits": {"cpu": "1500m", "memory": app["resources"]["limits"]["memory"]},
    }
    assert app["command"][:2] == ["/opt/cs/model/bin/python", "-m"]
    prefix = "/PSLmodels/Viz_App/alice-1a2b/"
    assert app["readinessProbe"]["httpGet"] == {"path": prefix, "port": 8010}
    env = {e["name"]: e for e in app["env"]}
    assert env["URL_BASE_PATHNAME"]["value"] == prefix
    secret = {"secretKeyRef": {"name": model_secret_name(model(tech)), "key": "MAPBOX_TOKEN"}}
    assert env["MAPBOX_TOKEN"] == {"name": "MAPBOX_TOKEN", "valueFrom": secret}  # no value
    assert not any(n.startswith(("PREFECT_", "CS_")) for n in env)
    # the Service selects exactly this pod; the Ingress sends its path to the front door
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["targetPort"] == 8010
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "viz.example.org"
    (path,) = rule["http"]["paths"]
    assert path["path"] == prefix
    assert path["backend"]["service"]["name"] == "cs-app-front-door"
    for m in manifests:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", m["metadata"]["name"])


def test_each_tech_listens_on_the_pod_and_allows_the_public_origin():
    def command(tech: str) -> list[str]:
        (deployment, *_) = app_manifests(model(tech), entry(), "d", NS, PUBLIC)
        return deployment["spec"]["template"]["spec"]["containers"][0]["command"]

    assert "0.0.0.0:8010" in command("dash")
    bokeh = command("bokeh")
    assert "--allow-websocket-origin=viz.example.org" in bokeh
    assert bokeh[bokeh.index("--address") + 1] == "0.0.0.0"
    streamlit = command("streamlit")
    assert streamlit[streamlit.index("--server.address") + 1] == "0.0.0.0"
    assert streamlit[streamlit.index("--browser.serverAddress") + 1] == "viz.example.org"


def test_only_the_front_door_reaches_an_app_and_an_app_reaches_nothing():
    policies = app_network_policies(NS)
    assert validate(policies) == 2
    closed, internet = policies
    assert closed["spec"]["podSelector"] == {"matchLabels": {"cs.compute.studio/role": "app"}}
    assert closed["spec"]["egress"] == []
    (rule,) = closed["spec"]["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/part-of": "prefect-cs",
                    "app.kubernetes.io/component": "app-front-door",
                }
            }
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8010}]
    assert "cs.compute.studio/internet" in json.dumps(internet["spec"]["podSelector"])
    (deployment, *_) = app_manifests(model("bokeh"), entry(), "d", NS, PUBLIC)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["cs.compute.studio/role"] == "app"
    assert pod_labels["cs.compute.studio/internet"] == "false"


def test_names_are_dns_labels_unique_per_deployment():
    long = app_name("O" * 40, "T" * 40, "n" * 40)
    assert len(long) <= 63
    assert app_name("o", "Viz", "a") != app_name("o", "viz", "a")  # case kept apart by the hash


def test_what_cannot_be_deployed_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="only dash, bokeh and streamlit"):
        app_manifests(
            ModelConfig(owner="o", title="t", repo_url="https://github.com/o/t"),
            entry(),
            "d",
            NS,
            PUBLIC,
        )
    with pytest.raises(ValueError, match="CS_TIER=kubernetes"):
        app_manifests(model("dash"), entry(image=None), "d", NS, PUBLIC)
    with pytest.raises(ValueError, match="CS_APPS_PUBLIC_URL"):
        app_manifests(model("dash"), entry(), "d", NS, "viz.example.org")


# ---- the front door: the one way in to every app ------------------------------------------

PLATFORM_IMAGE = "registry.example:5000/prefect-cs-platform@sha256:" + "a" * 64
API = "http://prefect-server.prefect:4200/api"
LINK_KEY = "link-key-" + "k" * 40
AUTH = "operator:auth-" + "p" * 30
DOOR_LOCKED = {**LOCKED, "runAsUser": 10002, "runAsGroup": 10002}  # not root, not the models'


def secret_values_set(monkeypatch) -> None:
    """What the rendering process could hold: none of it may reach a manifest."""
    monkeypatch.setenv("CS_APPS_LINK_KEY", LINK_KEY)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)


def by_ref_only(env: list[dict]) -> dict[str, dict]:
    """The secretKeyRef of each variable given by reference."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}


def test_the_front_door_is_rendered_confined_with_its_secrets_by_reference(monkeypatch):
    from prefect_cs.services.stack_parts import app_front_door

    secret_values_set(monkeypatch)
    manifests = front_door_manifests(PLATFORM_IMAGE, API, PUBLIC, NS)
    assert validate(manifests) == 5  # strict, Kubernetes 1.37
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Deployment", "cs-app-front-door"),
        ("Service", "cs-app-front-door"),
        ("NetworkPolicy", "cs-app-front-door"),
        ("NetworkPolicy", "cs-model-apps"),
        ("NetworkPolicy", "cs-model-apps-internet"),
    ]
    text = json.dumps(manifests)
    assert LINK_KEY not in text and AUTH not in text
    deployment = manifests[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    (door,) = pod["containers"]
    assert door["image"] == PLATFORM_IMAGE
    assert door["securityContext"] == DOOR_LOCKED
    # the process `stack start` runs as app-front-door, from the platform's venv
    assert door["command"][1:] == app_front_door().argv[1:]
    assert door["command"][0] == "/opt/cs/platform/bin/python"
    assert by_ref_only(door["env"]) == {
        "PREFECT_API_AUTH_STRING": {"name": "prefect-auth", "key": "auth-string"},
        "CS_APPS_LINK_KEY": {"name": "cs-app-link-key", "key": "key"},
    }
    env = {e["name"]: e.get("value") for e in door["env"]}
    assert env["CS_APPS_PUBLIC_URL"] == PUBLIC and env["PREFECT_API_URL"] == API
    assert env["CS_APPS_HOST"] == "0.0.0.0" and env["CS_APPS_PORT"] == "8795"
    assert door["ports"] == [{"name": "http", "containerPort": 8795, "protocol": "TCP"}]
    # its only writable places: emptyDirs for CS_HOME and /tmp
    mounts = {m["mountPath"] for m in door["volumeMounts"]}
    assert mounts == {env["CS_HOME"], "/tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])


def test_every_app_ingress_reaches_the_front_door_and_only_it_reaches_the_apps():
    deployment, service, door_policy, apps_policy, _ = front_door_manifests(
        PLATFORM_IMAGE, API, PUBLIC, NS
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (door,) = deployment["spec"]["template"]["spec"]["containers"]
    app_deployment, _, ingress = app_manifests(model("bokeh"), entry(), "d", NS, PUBLIC)
    # the Ingress's backend is this Service, on its port, selecting the front door's pods
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    (port,) = service["spec"]["ports"]
    assert backend == {"name": service["metadata"]["name"], "port": {"number": port["port"]}}
    assert port["targetPort"] == door["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NS
    assert app_deployment["metadata"]["namespace"] == NS  # cs-model-apps matches pods in NS
    # cs-model-apps admits exactly these pods; the front door's policy lets them reach the apps
    (admitted,) = apps_policy["spec"]["ingress"]
    assert admitted["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    spec = door_policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8795}]}]
    dns, api, apps = spec["egress"]  # nothing else
    assert {p["port"] for p in dns["ports"]} == {53}
    assert api == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prefect"}}}],
        "ports": [{"protocol": "TCP", "port": 4200}],
    }
    app_pod_labels = app_deployment["spec"]["template"]["metadata"]["labels"]
    assert apps["to"] == [{"podSelector": apps_policy["spec"]["podSelector"]}]
    assert apps_policy["spec"]["podSelector"]["matchLabels"].items() <= app_pod_labels.items()
    app_port = app_deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert apps["ports"] == [{"protocol": "TCP", "port": app_port["containerPort"]}]


def test_the_front_door_without_its_public_url_or_image_is_refused_naming_the_fix():
    with pytest.raises(InvalidValue, match="--apps-public-url"):
        front_door_manifests(PLATFORM_IMAGE, API, "apps.example.org", NS)
    with pytest.raises(InvalidValue, match="--platform-image"):
        front_door_manifests("", API, PUBLIC, NS)


def test_the_link_key_from_a_secret_signs_what_the_front_door_checks(monkeypatch, tmp_path):
    """CS_APPS_LINK_KEY (what the front door's secretKeyRef gives it) is the key: a link signed
    with it is valid under it and under no other key; no key file is made; a short key is
    refused naming the fix."""
    from prefect_cs.services import app_links

    monkeypatch.setenv("CS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CS_APPS_LINK_KEY", LINK_KEY)
    prefix = "/o/t/d/"
    link = app_links.access_query(prefix).partition("=")[2]
    assert app_links.link_valid(prefix, link)
    assert not (tmp_path / "home" / "apps" / "link-key").exists()
    monkeypatch.setenv("CS_APPS_LINK_KEY", LINK_KEY.replace("k", "x"))
    assert not app_links.link_valid(prefix, link)
    monkeypatch.setenv("CS_APPS_LINK_KEY", "short")
    with pytest.raises(ValueError, match="openssl rand -hex 32"):
        app_links.access_query(prefix)


def test_k8s_render_adds_the_front_door(platform):
    """`prefect-cs k8s render --apps-public-url …` as an operator runs it: the front door and
    the apps' policies among the manifests, all valid, no secret value in the output."""
    env = {**os.environ, "CS_APPS_LINK_KEY": LINK_KEY}
    argv = [sys.executable, "-m", "prefect_cs.cli.main", "k8s", "render", "--no-secrets"]
    argv += ["--platform-image", PLATFORM_IMAGE, "--api-url", API]
    done = subprocess.run(
        [*argv, "--apps-public-url", PUBLIC], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert LINK_KEY not in done.stdout + done.stderr
    assert os.environ["PREFECT_API_AUTH_STRING"] not in done.stdout + done.stderr
    manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
    validate(manifests)
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert {
        ("Deployment", "cs-app-front-door"),
        ("Service", "cs-app-front-door"),
        ("NetworkPolicy", "cs-app-front-door"),
        ("NetworkPolicy", "cs-model-apps"),
    } <= names
    refused = subprocess.run(
        [*argv, "--apps-public-url", "apps.example.org"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 1 and "--apps-public-url https://" in refused.stderr
