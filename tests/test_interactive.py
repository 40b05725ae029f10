"""Interactive model apps on the process tier: published, started through C/S's v1 API, opened
in a real browser through the front door, refused to others, stopped when idle, attacked.

Real parts: the session's Prefect server, `prefect-cs api serve` and the front door
(services/app_proxy.py) as processes of their own, a web app stand-in as the v1 cluster user,
examples/dash-app, bokeh-app and streamlit-app published into sandboxed venvs, Debian's
headless Chromium. Browsers reach the front door as `apps.test` (CS_APPS_PUBLIC_URL; Chromium
maps the name to loopback), so Bokeh's and Streamlit's WebSocket origin checks see a real
public name, not the loopback address both allow by default.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prefect_cs.services.supervisor import Background
from prefect_cs.testing.api_process import serving_api
from prefect_cs.testing.cs_client import Cluster
from prefect_cs.testing.models import (
    EXAMPLES,
    add_tag,
    git,
    make_repo,
    publish_model,
    register_model,
)
from prefect_cs.testing.scratch import free_port
from prefect_cs.testing.webapp_standin import WebAppStub
from prefect_cs.testing.webhooks import wait_until as until

DOOR_PORT = free_port()
IDLE_SECONDS = 20
PER_MODEL = 3
PUBLIC = f"http://apps.test:{DOOR_PORT}"  # the front door as browsers reach it
APPS_ENV = {
    "CS_APPS_PORT": str(DOOR_PORT),
    "CS_APPS_IDLE_SECONDS": str(IDLE_SECONDS),
    "CS_APPS_PUBLIC_URL": PUBLIC,
    "CS_APPS_MAX_PER_MODEL": str(PER_MODEL),
}
os.environ.update(APPS_ENV)  # this process's signed links and flows see the same front door
DOOR = f"http://127.0.0.1:{DOOR_PORT}"
OWNER = "apps"
DASH = {"tech": "dash", "app_location": "cs_config.app", "callable_name": "server"}
BOKEH = {"tech": "bokeh", "app_location": "app.py"}
STREAMLIT = {"tech": "streamlit", "app_location": "app.py"}


@pytest.fixture(scope="module")
def dash_app(platform, repos) -> Path:
    """examples/dash-app published: its tests and a smoke start of its server passed."""
    repo = make_repo("dash-app", repos / f"dash-{uuid.uuid4().hex[:6]}")
    register_model(OWNER, "Dash-Demo", repo, repo_tag="v1", memory="512Mi", **DASH)
    state = publish_model(OWNER, "Dash-Demo")
    assert state.is_completed(), state.message
    return repo


@pytest.fixture(scope="module")
def front_door(platform) -> Iterator[str]:
    from prefect_cs.services.stack_parts import app_front_door

    standard = app_front_door()
    bg = Background(f"app-front-door-{DOOR_PORT}", standard.argv, {**standard.env, **APPS_ENV})
    try:
        bg.start_and_wait(lambda: answers(f"{DOOR}/_cs/health"), timeout=90, what="front door")
        yield DOOR
    finally:
        bg.stop()
        print(bg.log_file.read_text()[-3000:])


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def webapp_cluster(platform, cs_home, dash_app, front_door) -> Iterator[Cluster]:
    """The web app's v1 Cluster, its project Dash-Demo synced (tech dash)."""
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import add_user

    stub = WebAppStub(token="interactive-webapp-token").start()
    # One name per session: test_interactive_docker uses this fixture too, and when it runs in
    # the same xdist worker its Dash-Demo sync by another web app user was a 409, five times.
    name = "webapp-apps"
    _, password = add_user(store_at(cs_home), name, stub.url, stub.token)
    with serving_api(
        "interactive-api", free_port(), v0_token="interactive-v0", env=APPS_ENV
    ) as api:
        c = Cluster(api, name, password)
        ok, _ = c.sync_projects([project("Dash-Demo", str(dash_app))])
        assert ok
        yield c
    stub.stop()


def project(title: str, repo_url: str, tech: dict = DASH, memory: str = "0.5") -> dict:
    """A project as C/S's web app syncs it (its ProjectSync fields)."""
    return {
        "owner": OWNER, "title": title, "callable_name": None, **tech, "exp_task_time": 1,
        "cpu": "1.0", "memory": memory, "repo_tag": "v1", "repo_url": repo_url,
        "latest_tag": "v1", "listed": True,
    }  # fmt: skip


def local(url: str) -> str:
    """A link for the test's own HTTP client (the browser resolves apps.test itself)."""
    return url.replace(PUBLIC, DOOR, 1)


def deployments(c: Cluster, path: str, method: str = "GET", **kw) -> httpx.Response:
    url = f"{c.url}/api/v1/deployments/{OWNER}/{path}"
    return httpx.request(method, url, headers=c.headers(), timeout=200, **kw)


def start(c: Cluster, name: str, title: str = "Dash-Demo") -> dict:
    answer = deployments(c, f"{title}/", "POST", json={"tag": "v1", "deployment_name": name})
    assert answer.status_code == 201, answer.text
    return answer.json()


def cookie_from(link: str) -> str:
    """What the front door sets for a signed link (and where it sends the browser)."""
    answer = httpx.get(local(link), follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert "cs_access" not in answer.headers["location"]
    return answer.headers["set-cookie"].split(";")[0]


def chromium_dom(url: str) -> str:
    """The page as headless Chromium rendered it, scripts and their requests run."""
    profile = Path(os.environ["CS_HOME"]).parent / f"chromium-{uuid.uuid4().hex[:6]}"
    argv = [
        shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
        "--host-resolver-rules=MAP apps.test 127.0.0.1",
        "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    return done.stdout


# ---- the tests -------------------------------------------------------------------------------


def test_the_browser_renders_the_app_and_its_callback_answers(webapp_cluster):
    """Started through C/S's POST, opened from its signed link in Chromium: the layout came
    through the proxy, and the slider's callback (a POST to the server) answered."""
    stats = start(webapp_cluster, "alice-1")
    assert {k: v["ready"] for k, v in stats.items() if k != "url"} == {
        "deployment": True, "svc": True, "ingressroute": True
    }  # fmt: skip
    dom = chromium_dom(stats["url"])
    assert "<h1>Squares</h1>" in dom, dom[-2000:]
    assert "7 squared is 49" in dom, dom[-2000:]  # the callback's round trip
    again = deployments(webapp_cluster, "Dash-Demo/alice-1/")
    assert again.status_code == 200 and again.json()["deployment"]["ready"] is True
    repeat = deployments(
        webapp_cluster, "Dash-Demo/", "POST", json={"tag": "v1", "deployment_name": "alice-1"}
    )
    assert repeat.status_code == 400 and "already running" in repeat.text
    deployments(webapp_cluster, "Dash-Demo/alice-1/", "DELETE")


def test_one_deployments_cookie_opens_no_other(webapp_cluster):
    alice, bob = start(webapp_cluster, "alice-2"), start(webapp_cluster, "bob-2")
    alice_cookie = cookie_from(alice["url"])
    alice_path, bob_path = urlsplit(alice["url"]).path, urlsplit(bob["url"]).path
    assert httpx.get(DOOR + alice_path, headers={"cookie": alice_cookie}).status_code == 200
    assert httpx.get(DOOR + bob_path, headers={"cookie": alice_cookie}).status_code == 403
    assert httpx.get(DOOR + bob_path).status_code == 403
    forged = bob["url"].split("cs_access=")[0] + "cs_access=9999999999.00"
    assert httpx.get(local(forged), follow_redirects=False).status_code == 403
    expired = alice["url"].split("cs_access=")[0] + "cs_access=1." + "0" * 64
    assert httpx.get(local(expired), follow_redirects=False).status_code == 403
    # the callback route too, and a WebSocket upgrade
    update = DOOR + bob_path + "_dash-update-component"
    assert httpx.post(update, json={}, headers={"cookie": alice_cookie}).status_code == 403
    assert websocket_refused(bob_path, alice_cookie)
    bob_cookie = cookie_from(bob["url"])
    assert not websocket_refused(bob_path, bob_cookie)  # passed on: Dash itself has no /ws
    for name in ("alice-2", "bob-2"):
        deployments(webapp_cluster, f"Dash-Demo/{name}/", "DELETE")


def websocket_refused(path: str, cookie: str, endpoint: str = "ws") -> bool:
    """Whether the front door itself refused the upgrade (not the app behind it)."""
    from httpx_ws import WebSocketUpgradeError, connect_ws

    try:
        with (
            httpx.Client() as client,
            connect_ws(DOOR + path + endpoint, client, headers={"cookie": cookie}),
        ):
            return False
    except WebSocketUpgradeError as exc:  # refused by the front door, not by the app
        return exc.response.headers.get("x-cs-front-door") == "refused"


def test_an_idle_deployment_is_stopped_and_freed_and_its_page_restarts_it(webapp_cluster):
    from prefect_cs.flows.interactive import app_list

    stats = start(webapp_cluster, "carol-1")
    cookie = cookie_from(stats["url"])
    path = urlsplit(stats["url"]).path
    (running,) = [d for d in app_list() if d["deployment_name"] == "carol-1"]
    pids, sock = running["pids"], Path(running["socket"])
    assert pids and sock.exists()
    until(
        lambda: any(
            d["state"] == "stopped" for d in app_list() if d["deployment_name"] == "carol-1"
        ),
        IDLE_SECONDS * 6,
        "the idle deployment stopped",
    )
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert not sock.exists() and not sock.parent.exists()
    page = httpx.get(DOOR + path, headers={"cookie": cookie})
    assert page.status_code == 503 and "Restart" in page.text
    restarted = httpx.post(DOOR + path + "_cs/restart", headers={"cookie": cookie}, timeout=200)
    assert restarted.status_code == 303
    assert httpx.get(DOOR + path, headers={"cookie": cookie}).status_code == 200
    gone = deployments(webapp_cluster, "Dash-Demo/carol-1/", "DELETE")
    assert gone.json()["deployment"] == {"deleted": True}


@pytest.fixture(scope="module")
def attacker_app(platform, repos, cs_home, webapp_cluster) -> str:
    """examples/attacker-app served as a Dash deployment (cs_config/app.py, plain WSGI)."""
    from tests.test_attacks import attack_targets

    repo = repos / f"attacker-app-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLES / "attacker-app", repo)
    config = repo / "cs-config"
    (config / "cs_config" / "targets.json").write_text(json.dumps(attack_targets(cs_home)))
    with (config / "install.sh").open("a") as script:
        script.write('\npip install "gunicorn==23.0.0"\n')
    git(repo, "init", "-q")
    add_tag(repo, "v1", "attacker app")
    register_model(
        OWNER, "Attacker-App", repo, repo_tag="v1", memory="512Mi", time_limit=60, **DASH
    )
    state = publish_model(OWNER, "Attacker-App")
    assert state.is_completed(), state.message
    ok, _ = webapp_cluster.sync_projects([project("Attacker-App", str(repo))])
    assert ok
    return "Attacker-App"


def test_an_attacker_app_server_gets_nothing(webapp_cluster, attacker_app):
    stats = start(webapp_cluster, "mallory-1", attacker_app)
    cookie = cookie_from(stats["url"])
    path = urlsplit(stats["url"]).path
    webapp = webapp_cluster.url  # the cluster API, on the host's loopback
    answer = httpx.get(
        DOOR + path + "attack",
        params={"webapp": webapp},
        headers={"cookie": f"{cookie}; app=1"},
        timeout=120,
    )
    report = answer.json()
    assert report["phase"] == "app_server"
    assert report["ran"] == 17, report
    got = {k: v for k, v in report["probes"].items() if v["outcome"] == "GOT"}
    assert got == {}, got
    assert report["uid"] != 0
    assert report["probes"]["loopback_scan"]["detail"] == "no port open"  # but its own, 8010
    assert report["seen_cookie"] == "app=1"  # the platform's cookie never reaches the model
    deployments(webapp_cluster, f"{attacker_app}/mallory-1/", "DELETE")


# ---- Bokeh and Streamlit: their pages talk to their servers over a WebSocket -------------------

# the page's slider set to n (true once Bokeh's document has loaded and it could)
SLIDE = (
    "(() => {{ const m = window.Bokeh && Bokeh.documents[0]"
    " && Bokeh.documents[0].get_model_by_name('n'); if (m) m.value = {n}; return !!m; }})()"
)
WEBSOCKET_APPS = {
    # title: (example, model config, C/S memory GB, the app's WebSocket under its prefix,
    #         the user's action in the page, the text it must bring back from the server)
    "Bokeh-Demo": (
        "bokeh-app", BOKEH, "0.5", "ws",
        SLIDE, "{n} squared is {nn}",
    ),
    "Streamlit-Demo": (
        "streamlit-app", STREAMLIT, "1", "_stcore/stream",
        "(() => {{ const b = [...document.querySelectorAll('button')]"
        ".find(b => b.textContent.includes('Add one')); b && b.click(); return !!b; }})()",
        "{n} squared is {nn}",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def websocket_apps(platform, repos, webapp_cluster) -> list[str]:
    """examples/bokeh-app and streamlit-app published (their own tests, a smoke start) and
    synced as the web app's projects."""
    synced = []
    for title, (example, tech, memory, *_) in WEBSOCKET_APPS.items():
        repo = make_repo(example, repos / f"{example}-{uuid.uuid4().hex[:6]}")
        mib = f"{int(float(memory) * 1024)}Mi"
        register_model(OWNER, title, repo, repo_tag="v1", memory=mib, **tech)
        state = publish_model(OWNER, title)
        assert state.is_completed(), f"{title}: {state.message}"
        synced.append(project(title, str(repo), tech, memory))
    ok, _ = webapp_cluster.sync_projects(synced)
    assert ok
    return list(WEBSOCKET_APPS)


def browser_profile() -> Path:
    return Path(os.environ["CS_HOME"]).parent / f"chromium-{uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize("title", list(WEBSOCKET_APPS))
def test_websocket_apps_render_and_round_trip_and_refuse_other_cookies(
    webapp_cluster, websocket_apps, title
):
    """Started through C/S's POST and opened from its signed link in Chromium (as apps.test):
    the page rendered, the user's action went to the server over the app's WebSocket through
    the front door and its answer came back; another deployment's cookie is refused on it."""
    from prefect_cs.testing.browser import chromium

    _, _, _, endpoint, action, answer = WEBSOCKET_APPS[title]
    alice, bob = start(webapp_cluster, "alice-ws", title), start(webapp_cluster, "bob-ws", title)
    with chromium(browser_profile(), resolve={"apps.test": "127.0.0.1"}) as browser:
        page = browser.open(alice["url"])
        text = page.wait_for_text(answer.format(n=7, nn=49), seconds=90)
        assert "Squares" in text
        page.until(action.format(n=8))
        page.wait_for_text(answer.format(n=8, nn=64), seconds=60)
    alice_cookie = cookie_from(alice["url"])
    bob_path = urlsplit(bob["url"]).path
    assert websocket_refused(bob_path, alice_cookie, endpoint)
    assert websocket_refused(bob_path, "", endpoint)
    assert not websocket_refused(bob_path, cookie_from(bob["url"]), endpoint)
    for name in ("alice-ws", "bob-ws"):
        deployments(webapp_cluster, f"{title}/{name}/", "DELETE")


def test_websocket_traffic_keeps_a_deployment_from_the_idle_stop(webapp_cluster, websocket_apps):
    """A Bokeh page talks only over its WebSocket once loaded: moving its slider for longer
    than the idle time, with no HTTP request, keeps the deployment running."""
    from prefect_cs.flows.interactive import app_list
    from prefect_cs.testing.browser import chromium

    stats = start(webapp_cluster, "dave-ws", "Bokeh-Demo")
    with chromium(browser_profile(), resolve={"apps.test": "127.0.0.1"}) as browser:
        page = browser.open(stats["url"])
        page.wait_for_text("7 squared is 49", seconds=90)
        deadline, n = time.monotonic() + IDLE_SECONDS * 1.6, 1  # the reaper looks every 5 s
        while time.monotonic() < deadline:
            n = n % 10 + 1
            page.until(SLIDE.format(n=n))
            page.wait_for_text(f"{n} squared is {n * n}", seconds=IDLE_SECONDS)
            time.sleep(IDLE_SECONDS / 5)  # the pace of a user, not a wait for a condition
        (dave,) = [d for d in app_list() if d["deployment_name"] == "dave-ws"]
        assert dave["state"] == "running", dave
    deployments(webapp_cluster, "Bokeh-Demo/dave-ws/", "DELETE")


def test_the_caps_answer_429_through_the_api(webapp_cluster, websocket_apps):
    """CS_APPS_MAX_PER_MODEL deployments of one model run; the next POST is 429 naming it."""
    from prefect_cs.flows.interactive import app_list

    for d in app_list():
        if d["title"] == "Bokeh-Demo" and d["state"] != "stopped":
            deployments(webapp_cluster, f"Bokeh-Demo/{d['deployment_name']}/", "DELETE")
    names = [f"cap-{i}" for i in range(PER_MODEL)]
    for name in names:
        start(webapp_cluster, name, "Bokeh-Demo")
    over = deployments(
        webapp_cluster, "Bokeh-Demo/", "POST", json={"tag": "v1", "deployment_name": "cap-x"}
    )
    assert over.status_code == 429, over.text
    assert "CS_APPS_MAX_PER_MODEL" in over.json()["detail"]
    for name in names:
        deployments(webapp_cluster, f"Bokeh-Demo/{name}/", "DELETE")
    paths = httpx.get(f"{webapp_cluster.url}/openapi.json").json()["paths"]
    assert "/api/v1/deployments/{owner}/{title}/" in paths  # the routes are documented


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
