"""Interactive app deployments on Kubernetes, rendered and validated (no cluster here): one
Deployment + Service + Ingress per deployment, confined as a Job's model container, and the
NetworkPolicy that admits only the front door (infra/kubernetes_apps.py)."""

from __future__ import annotations

import json
import re

import pytest
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.infra.kubernetes_apps import app_manifests, app_name, app_network_policies
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
