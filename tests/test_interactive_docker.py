"""Interactive apps on the Docker tier: one confined container of the model's image per
deployment, reached by the front door through a socket it opened without following links.

Real parts: the Docker engine and registry, examples/bokeh-app published with CS_TIER=docker
(image built, its tests and a smoke start in containers, pushed), the front door and the
cluster API of tests/test_interactive.py, headless Chromium.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prefect_cs.runtime.app_container import APP_LABEL, UnsafeSocket, open_socket
from prefect_cs.testing.docker_tier import docker_ready, docker_tier
from prefect_cs.testing.models import make_repo, publish_model, register_model
from prefect_cs.testing.webhooks import wait_until as until

from tests import test_interactive as shared
from tests.test_interactive import (
    BOKEH,
    DOOR,
    OWNER,
    SLIDE,
    browser_profile,
    cookie_from,
    deployments,
    project,
    start,
    websocket_refused,
)

# the process tier's fixtures: its front door, the cluster API and the web app's Cluster
dash_app, front_door, webapp_cluster = shared.dash_app, shared.front_door, shared.webapp_cluster

TITLE = "Bokeh-Docker"


@pytest.fixture(scope="module")
def docker_bokeh(platform, repos, webapp_cluster) -> str:
    """examples/bokeh-app published on the Docker tier and synced as a web app project."""
    with docker_ready():
        repo = make_repo("bokeh-app", repos / f"bokeh-docker-{uuid.uuid4().hex[:6]}")
        register_model(OWNER, TITLE, repo, repo_tag="v1", memory="512Mi", **BOKEH)
        with docker_tier():
            state = publish_model(OWNER, TITLE)
        assert state.is_completed(), state.message
        ok, _ = webapp_cluster.sync_projects([project(TITLE, str(repo), BOKEH)])
        assert ok
        yield TITLE


def app_containers() -> list:
    import docker

    client = docker.from_env()
    return [
        client.containers.get(c["Id"])
        for c in client.api.containers(filters={"label": APP_LABEL})
        if c["Labels"].get("cs.compute.studio/model") == f"{OWNER}/{TITLE}"
    ]


def test_a_docker_deployment_is_a_confined_container_behind_the_front_door(
    webapp_cluster, docker_bokeh
):
    from prefect_cs.testing.browser import chromium

    alice, bob = start(webapp_cluster, "alice-d", TITLE), start(webapp_cluster, "bob-d", TITLE)
    (container, _) = app_containers()
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert config["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["NetworkMode"] == "none" and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0
    assert not any(e.startswith(("PREFECT_", "CS_")) for e in config["Env"])
    with chromium(browser_profile(), resolve={"apps.test": "127.0.0.1"}) as browser:
        page = browser.open(alice["url"])
        page.wait_for_text("7 squared is 49", seconds=90)
        page.until(SLIDE.format(n=8))
        page.wait_for_text("8 squared is 64", seconds=60)
    bob_path = urlsplit(bob["url"]).path
    assert websocket_refused(bob_path, cookie_from(alice["url"]))
    assert not websocket_refused(bob_path, cookie_from(bob["url"]))
    for name in ("alice-d", "bob-d"):
        gone = deployments(webapp_cluster, f"{TITLE}/{name}/", "DELETE")
        assert gone.json()["deployment"] == {"deleted": True}
    until(lambda: app_containers() == [], 60, "every app container removed")


def test_a_socket_swapped_inside_the_container_changes_nothing(webapp_cluster, docker_bokeh):
    """The app replaces its socket by a link to the front door's control socket once the front
    door holds it: pages still come from the app (through the descriptor it checked)."""
    stats = start(webapp_cluster, "mallory-d", TITLE)
    cookie = cookie_from(stats["url"])
    path = urlsplit(stats["url"]).path
    (container,) = app_containers()
    control = str(Path(os.environ["CS_HOME"]) / "apps" / "control.sock")
    swap = f"import os; os.unlink('/cs/app/app.sock'); os.symlink({control!r}, '/cs/app/app.sock')"
    done = container.exec_run(["/opt/cs/model/bin/python", "-c", swap], user="10001:10001")
    assert done.exit_code == 0, done.output
    page = httpx.get(DOOR + path + "app", headers={"cookie": cookie})  # Bokeh's page
    assert page.status_code == 200 and "Bokeh" in page.text
    deployments(webapp_cluster, f"{TITLE}/mallory-d/", "DELETE")


def test_the_front_door_opens_only_the_apps_own_socket(tmp_path):
    """What open_socket refuses: a link (even to a real socket), a file, another uid's socket."""
    real = tmp_path / "real.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(real))
    listener.listen(1)
    (tmp_path / "link.sock").symlink_to(real)
    (tmp_path / "file.sock").write_text("x")
    with pytest.raises(UnsafeSocket):
        open_socket(tmp_path / "link.sock", uid=os.geteuid())
    with pytest.raises(UnsafeSocket):
        open_socket(tmp_path / "file.sock", uid=os.geteuid())
    if os.geteuid() == 0:  # root made it: not the model's uid
        with pytest.raises(UnsafeSocket):
            open_socket(real)
    fd = open_socket(real, uid=os.geteuid())
    client = socket.socket(socket.AF_UNIX)
    client.connect(f"/proc/self/fd/{fd}")
    client.close()
    os.close(fd)
    listener.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
