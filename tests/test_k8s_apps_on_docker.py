"""The rendered Kubernetes app Deployment's pod, run for real on Docker.

Why: tests/test_k8s_apps.py validates the Deployment infra/kubernetes_apps.py renders, but a
schema cannot say whether the server starts from C/S's command in the model's image, under
the pod's confinement, and answers under the deployment's prefix. Kubernetes cannot run here;
Docker can, so the pod template is run as the kubelet would (testing/job_on_docker.Pod, the
same translation as the simulation Job's: securityContext, limits, env with secretKeyRefs
resolved from the secrets backend, the `work` emptyDir as a tmpfs of the container's user).
`--network none` stands in for the app NetworkPolicy's closed egress, so the page is asked
for from inside the container (`docker exec`), where the pod's port is its own loopback.

Real parts: the Docker engine and registry, examples/bokeh-app published once with
CS_TIER=docker (its image is the one a kubernetes-tier publish builds; a Deployment needs
only `entry.image`), one container start.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.infra.kubernetes_apps import app_manifests
from prefect_cs.runtime.app_server import url_prefix
from prefect_cs.testing.docker_tier import docker_ready, docker_tier
from prefect_cs.testing.job_on_docker import Pod, backend_resolver, memory_bytes
from prefect_cs.testing.manifests import validate
from prefect_cs.testing.models import make_repo, publish_model, register_model

OWNER, TITLE, NAME = "apps", "Bokeh-K8s", "alice-k8s"
BOKEH = {"tech": "bokeh", "app_location": "app.py"}
PUBLIC = "https://apps.example.org"
SECRET_VALUE = f"app-tok-{uuid.uuid4().hex}"

# Run inside the app container as its uid: wait for the page, then report what the server
# process (pid 1) runs as and holds. Prints names and a digest, never a variable's value.
PROBE = r"""
import errno, hashlib, json, os, sys, time, urllib.request
url = sys.argv[1]
deadline, page, error = time.time() + 90, None, None
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            page = [answer.status, answer.read().decode(errors="replace")[:20000]]
            break
    except Exception as exc:
        error = repr(exc)
        time.sleep(0.3)
status = dict(l.split(":\t", 1) for l in open("/proc/1/status").read().splitlines() if ":\t" in l)
env = dict(
    e.split("=", 1) for e in open("/proc/1/environ").read().split("\0") if "=" in e
)
listening = [  # local addresses of sockets listening on 8010 (hex, as the kernel lists them)
    f.split()[1].rsplit(":", 1)[0]
    for table in ("/proc/net/tcp", "/proc/net/tcp6")
    for f in open(table).read().splitlines()[1:]
    if f.split()[1].endswith(":%04X" % 8010) and f.split()[3] == "0A"
]
try:  # /tmp is the image's (1777): only a read-only root keeps uid 10001 out of it
    open("/tmp/planted", "w").close()
    root_write = "written"
except OSError as exc:
    root_write = errno.errorcode[exc.errno]
print(json.dumps({
    "page": page, "error": error, "uid": status["Uid"].split(), "gid": status["Gid"].split(),
    "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "env": sorted(env),
    "token_sha": hashlib.sha256(env.get("APP_TOKEN", "").encode()).hexdigest(),
    "root_write": root_write, "listening": listening,
}))
"""


@pytest.fixture(scope="module")
def bokeh_app(platform, repos) -> ModelConfig:
    """examples/bokeh-app published on the Docker tier (one image build), with one secret."""
    from prefect_cs.security.secrets import get_backend

    with docker_ready():
        repo = make_repo("bokeh-app", repos / f"bokeh-k8s-{uuid.uuid4().hex[:6]}")
        register_model(
            OWNER, TITLE, repo, repo_tag="v1", memory="512Mi", secrets=["APP_TOKEN"], **BOKEH
        )
        get_backend(f"{OWNER}/{TITLE}").set("APP_TOKEN", SECRET_VALUE)
        with docker_tier():
            state = publish_model(OWNER, TITLE)
        assert state.is_completed(), state.message
        yield ModelConfig.for_model(OWNER, TITLE)


def probe(container: str, url: str) -> dict:
    done = subprocess.run(
        ["docker", "exec", "--user", "10001:10001", container]
        + ["/opt/cs/model/bin/python", "-I", "-c", PROBE, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def inspect(container: str) -> dict:
    done = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)[0]


def test_the_rendered_app_deployment_serves_its_page_confined_on_docker(bokeh_app):
    model = bokeh_app
    deployment, *_ = app_manifests(model, model.published(), NAME, "cs-models", PUBLIC)
    assert validate([deployment]) == 1
    assert SECRET_VALUE not in json.dumps(deployment)  # by secretKeyRef only
    template = deployment["spec"]["template"]
    (spec,) = template["spec"]["containers"]
    pod = Pod(template, backend_resolver(OWNER, TITLE), f"cs-app-{uuid.uuid4().hex[:8]}")
    container = f"{pod.name}-app"
    prefix = url_prefix(OWNER, TITLE, NAME)
    try:
        assert pod.start(), pod.ended
        pod.wait_running("app")
        seen = probe(container, f"http://127.0.0.1:8010{prefix}app")
        attrs = inspect(container)
        docker_run = " ".join(pod.started["app"].args)  # the host's `docker run` command line
    finally:
        ended = pod.stop()
    output = ended.output("app")
    assert seen["page"] is not None, (seen["error"], output[-3000:])
    status, page = seen["page"]
    assert status == 200 and "Bokeh" in page and prefix in page, page[:2000]
    # on the pod's address (what its Service targets), not only its loopback
    assert "00000000" in seen["listening"] or "0" * 32 in seen["listening"], seen["listening"]
    # the server (pid 1) as the pod's securityContext says
    assert seen["uid"] == ["10001"] * 4 and seen["gid"] == ["10001"] * 4
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0
    assert seen["no_new_privs"] == "1" and seen["seccomp"] == "2"  # filter mode
    assert seen["root_write"] == "EROFS" and attrs["HostConfig"]["ReadonlyRootfs"] is True
    limit = memory_bytes(spec["resources"]["limits"]["memory"])
    assert limit == model.memory_limit_mib * 2**20
    assert attrs["HostConfig"]["Memory"] == limit == attrs["HostConfig"]["MemorySwap"]
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    # its environment: C/S's and the model's, its secret from the backend, nothing of ours
    assert not [n for n in seen["env"] if n.startswith(("PREFECT_", "CS_"))], seen["env"]
    assert {"OWNER", "TITLE", "URL_BASE_PATHNAME", "APP_TOKEN"} <= set(seen["env"])
    assert seen["token_sha"] == hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    assert "APP_TOKEN" in docker_run and SECRET_VALUE not in docker_run  # `-e NAME` only
    assert SECRET_VALUE not in json.dumps(attrs["Args"]) + json.dumps(attrs["Path"])
    assert SECRET_VALUE not in output


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
