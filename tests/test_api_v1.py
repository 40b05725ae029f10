"""The v1 cluster protocol (`/api/v1`) as Compute Studio's later web app calls it.

Real parts: `prefect-cs api serve` as its own process on the session's Prefect
server, two web app stand-ins (two cluster users, two tenants), the secrets
store, and for jobs a published model, the inputs worker and a process worker.
The client is testing/cs_client.py's `Cluster`, which behaves as C/S's
`Cluster` row (login form, token renewal rule, bearer header, `/api/v1` paths).
Every auth case here was run once against a mutant of the code it guards
(README, "Connecting a web app", v1).
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import Body, FastAPI
from prefect_cs.services.supervisor import Background
from prefect_cs.testing.api_process import serving_api
from prefect_cs.testing.cs_client import Cluster, ClusterLoginException
from prefect_cs.testing.scratch import free_port
from prefect_cs.testing.webapp_standin import OAuthWebAppStub, WebAppStub
from prefect_cs.testing.webhooks import wait_until as until  # the project's one poll-until
from pydantic import BaseModel

V0_TOKEN = "cluster-api-v1-tests-v0-token"
API_LOGS: list = []  # the log file of each API process this module started


def serving(port: int):
    """`prefect-cs api serve` on `port`, v0 token and v1 signing key from the secrets store."""
    return serving_api("cluster-api-v1-tests", port, v0_token=V0_TOKEN, logs=API_LOGS)


@pytest.fixture(scope="module")
def api(platform) -> Iterator[str]:
    with serving(free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def tenants(api, cs_home) -> Iterator[dict[str, dict]]:
    """Two web apps, each a cluster user with its own stand-in; C/S's Cluster row for each.
    webapp-a takes results as C/S v1's web app did (bearer tokens from its OAuth
    application's client credentials), webapp-b with a fixed token (as C/S 1.6's)."""
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import add_user

    found = {}
    oauth = OAuthWebAppStub(client_secret=f"secret-{uuid.uuid4().hex}").start()
    client = (oauth.client_id, oauth.client_secret)
    user, password = add_user(store_at(cs_home), "webapp-a", oauth.url, oauth_client=client)
    found["webapp-a"] = {"stub": oauth, "user": user, "password": password}
    stub = WebAppStub(token="webapp-b-results-token").start()
    user, password = add_user(store_at(cs_home), "webapp-b", stub.url, stub.token)
    found["webapp-b"] = {"stub": stub, "user": user, "password": password}
    yield found
    for tenant in found.values():
        tenant["stub"].stop()


def cluster(api: str, tenants: dict, name: str = "webapp-a") -> Cluster:
    return Cluster(api, name, tenants[name]["password"])


def signing_key() -> str:
    from prefect_cs.security.secrets import get_backend

    return get_backend(None).get("CLUSTER_API_JWT_KEY")


def token_for(user_id: int, key: str, exp: datetime) -> str:
    claims = {"sub": str(user_id), "aud": "prefect-cs-api-v1", "iat": int(time.time()) - 10}
    return jwt.encode({**claims, "exp": int(exp.timestamp())}, key, algorithm="HS256")


def projects_list(api: str, token: str) -> httpx.Response:
    return httpx.get(f"{api}/api/v1/projects/", headers={"Authorization": f"Bearer {token}"})


# ---- login ---------------------------------------------------------------------------------


def test_the_v0_health_and_schema_list_the_v1_routes(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    assert "/api/v1/login/access-token" in schema["paths"] and "/sync/" in schema["paths"]
    assert "/api/v1/builds/{build_id}/" in schema["paths"]


def test_login_answers_cs_token_schema_and_the_token_opens_v1(api, tenants):
    c = cluster(api, tenants)
    headers = c.headers()
    assert c.logins == 1 and c.access_token
    lifetime = c.access_token_expires_at - datetime.now(UTC)
    assert timedelta(minutes=55) < lifetime + timedelta(seconds=120) <= timedelta(minutes=61)
    r = httpx.get(f"{api}/api/v1/projects/", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"count": 0, "next": None, "previous": None, "results": []}
    c.headers()
    assert c.logins == 1  # kept while it has not expired


def test_the_client_renews_a_token_60_s_after_its_expires_at_as_cs_does(api, tenants):
    c = cluster(api, tenants)
    c.headers()
    first = c.access_token
    c.access_token_expires_at = datetime.now(UTC) - timedelta(seconds=30)
    c.headers()
    assert c.logins == 1 and c.access_token == first  # C/S waits 60 s past expires_at
    c.access_token_expires_at = datetime.now(UTC) - timedelta(seconds=61)
    c.headers()
    assert c.logins == 2
    assert projects_list(api, c.access_token).status_code == 200


def test_the_token_outlives_its_advertised_expiry_by_more_than_cs_renewal_delay(api, tenants):
    """C/S renews 60 s after expires_at: the token itself lives 120 s past it."""
    c = cluster(api, tenants)
    c.headers()
    claims = jwt.decode(c.access_token, options={"verify_signature": False})
    assert claims["exp"] - c.access_token_expires_at.timestamp() == pytest.approx(120, abs=1)


@pytest.mark.parametrize(
    "form, status",
    [
        ({"username": "webapp-a", "password": "wrong"}, 400),
        ({"username": "nobody", "password": "x"}, 400),
        ({"username": "webapp-a"}, 422),
        ({"password": "x"}, 422),
        ({"username": "webapp-a", "password": ""}, 422),
    ],
)
def test_login_refused_as_cs_cluster_answered(api, tenants, form, status):
    r = httpx.post(f"{api}/api/v1/login/access-token", data=form)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json() == {"detail": "Incorrect username or password"}
    else:
        (error,) = r.json()["detail"]
        assert error["type"] == "missing" and error["loc"][0] == "body"


def test_a_prefix_of_the_password_is_refused(api, tenants):
    password = tenants["webapp-a"]["password"]
    for given in (password[:-1], password[:8]):
        r = httpx.post(
            f"{api}/api/v1/login/access-token", data={"username": "webapp-a", "password": given}
        )
        assert r.status_code == 400, r.text


def test_another_tenants_password_is_refused(api, tenants):
    with pytest.raises(ClusterLoginException, match="Expected 200, got 400"):
        Cluster(api, "webapp-a", tenants["webapp-b"]["password"]).headers()


# ---- users: C/S's /users/ routes, creation kept to superusers --------------------------------


def new_user_body(stub: Any, name: str, password: str) -> dict:
    """C/S's create_user body (its test's fields)."""
    return {
        "email": f"{name}@example.com", "username": name, "password": password,
        "url": stub.url, "client_id": stub.client_id, "client_secret": stub.client_secret,
    }  # fmt: skip


def test_only_a_superuser_creates_users_and_they_share_the_clis_store(api, tenants):
    import secrets as random

    from prefect_cs.cli.main import app
    from prefect_cs.security.secrets import get_backend
    from typer.testing import CliRunner

    runner = CliRunner()
    added = runner.invoke(app, ["api", "users", "add", "v1-super", "--superuser"])
    assert added.exit_code == 0, added.output
    root = Cluster(api, "v1-super", get_backend(None).get("CLUSTER_USER_v1-super_PASSWORD"))
    stub, password = tenants["webapp-a"]["stub"], "pw-" + random.token_urlsafe(16)
    body = new_user_body(stub, "v1-made", password)
    url = f"{api}/api/v1/users/"
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers=cluster(api, tenants).headers())
    assert r.status_code == 400 and r.json() == {
        "detail": "The user doesn't have enough privileges"
    }
    assert Cluster(api, "v1-made", password).logins == 0
    with pytest.raises(ClusterLoginException):
        Cluster(api, "v1-made", password).headers()
    r = httpx.post(url, json=body, headers=root.headers())
    assert r.status_code == 201, r.text
    assert r.json() == {
        "email": "v1-made@example.com", "username": "v1-made", "url": stub.url,
        "is_approved": False, "is_active": True,
    }  # fmt: skip
    assert httpx.post(url, json=body, headers=root.headers()).json() == {
        "detail": "The user with this username already exists in the system"
    }
    listed = runner.invoke(app, ["api", "users", "list"]).output
    assert "v1-made" in listed and "not approved" in listed and "superuser" in listed
    made = Cluster(api, "v1-made", password)
    assert (
        httpx.get(f"{api}/api/v1/users/me", headers=made.headers()).json()["username"] == "v1-made"
    )
    assert httpx.get(f"{api}/api/v1/users/ping/", headers=made.headers()).status_code == 200
    r = projects_list(api, made.access_token)
    assert r.status_code == 403 and "not approved" in r.json()["detail"], r.text
    approval = {"username": "v1-made", "is_approved": True}
    r = httpx.post(f"{url}approve/", json=approval, headers=made.headers())
    assert r.status_code == 400, r.text  # only a superuser approves
    r = httpx.post(f"{url}approve/", json=approval, headers=root.headers())
    assert r.status_code == 200 and r.json()["is_approved"] is True, r.text
    assert projects_list(api, made.access_token).status_code == 200
    assert projects_list(api, root.access_token).status_code == 403  # a superuser runs nothing
    assert runner.invoke(app, ["api", "users", "delete", "v1-made"]).exit_code == 0
    assert projects_list(api, made.access_token).status_code == 401
    assert runner.invoke(app, ["api", "users", "delete", "v1-super"]).exit_code == 0
    for log in API_LOGS:
        assert password not in log.read_text(errors="replace")


def test_a_user_body_cs_schema_refuses_is_422_without_echoing_secrets(api, tenants):
    from prefect_cs.cli.main import app
    from prefect_cs.security.secrets import get_backend
    from typer.testing import CliRunner

    assert (
        CliRunner().invoke(app, ["api", "users", "add", "v1-super2", "--superuser"]).exit_code == 0
    )
    root = Cluster(api, "v1-super2", get_backend(None).get("CLUSTER_USER_v1-super2_PASSWORD"))
    body = new_user_body(tenants["webapp-a"]["stub"], "v1-bad", "pw-never-echoed")
    for field, value in (("email", "not-an-email"), ("url", "ftp://x")):
        r = httpx.post(f"{api}/api/v1/users/", json={**body, field: value}, headers=root.headers())
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
        assert "pw-never-echoed" not in r.text and body["client_secret"] not in r.text
    r = httpx.post(
        f"{api}/api/v1/users/", json={"password": "pw-never-echoed"}, headers=root.headers()
    )
    assert r.status_code == 422 and "pw-never-echoed" not in r.text, r.text


# ---- login limits ----------------------------------------------------------------------------

LIMITS_ENV = {  # 3 failures per name, 6 per address, each bucket refilled whole in 6 s
    "CS_API_LOGIN_FAILURES_PER_USER": "3",
    "CS_API_LOGIN_FAILURES_PER_ADDRESS": "6",
    "CS_API_LOGIN_FAILURE_WINDOW": "6",
}


@pytest.fixture
def limited(platform, cs_home) -> Iterator[tuple[str, str]]:
    """An API process of its own with small login limits (the module's API keeps its budget
    for the other tests' wrong passwords), and a user of its own: (URL, password)."""
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import add_user

    _, password = add_user(store_at(cs_home), "webapp-limits", "http://127.0.0.1:9", "unused")
    port = free_port()
    with serving_api("cluster-api-v1-limits", port, v0_token=V0_TOKEN, env=LIMITS_ENV) as url:
        yield url, password


def login(url: str, username: str, password: str) -> httpx.Response:
    form = {"username": username, "password": password}
    return httpx.post(f"{url}/api/v1/login/access-token", data=form, timeout=30)


def test_a_burst_of_wrong_passwords_is_limited_and_the_right_user_gets_back_in(limited):
    url, password = limited
    assert [login(url, "webapp-limits", "wrong").status_code for _ in range(3)] == [400] * 3
    r = login(url, "webapp-limits", password)  # the right one too: the name is limited
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["Retry-After"]) <= 2 and "retry in" in r.json()["detail"]
    time.sleep(int(r.headers["Retry-After"]))  # what the answer asks the client to wait
    ok = until(lambda: (r := login(url, "webapp-limits", password)).status_code == 200 and r, 30)
    assert ok.json()["access_token"]


def test_one_address_trying_many_names_is_limited(limited):
    url, _ = limited
    answers = [login(url, f"guess-{i}", "wrong").status_code for i in range(6)]
    assert answers == [400] * 6
    r = login(url, "guess-new", "wrong")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text


def test_login_buckets_refill_and_stay_bounded():
    from prefect_cs.services.api_v1.login_limits import Buckets

    now = [0.0]
    buckets = Buckets(burst=2, window=10, max_keys=100, clock=lambda: now[0])
    buckets.fail("a"), buckets.fail("a")
    assert buckets.wait("a") == pytest.approx(5)  # one token back every 10/2 s
    now[0] = 5.0
    assert buckets.wait("a") == 0
    for i in range(1000):
        buckets.fail(f"flood-{i}")
    assert len(buckets) <= 100
    assert buckets.wait("flood-999") == 0 and buckets.fail("flood-999") is None
    assert buckets.wait("flood-999") == pytest.approx(5)


# ---- the bearer token ---------------------------------------------------------------------

V1_ROUTES = [
    ("GET", "/api/v1/projects/", None),
    ("POST", "/api/v1/projects/sync/", []),
    ("POST", "/api/v1/jobs/v1tests/Misbehaving/", {"task_name": "version", "tag": "v1"}),
]


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def refused(api: str, authorization: str | None) -> list[Answer]:
    """Each V1_ROUTES call with this Authorization header sent as is (http.client: httpx
    refuses to send `Bearer ` with its trailing space)."""
    host, port = api.removeprefix("http://").split(":")
    answers = []
    for method, path, body in V1_ROUTES:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = conn.getresponse()
            found = {k.lower(): v for k, v in r.getheaders()}
            answers.append(Answer(r.status, found, r.read().decode()))
        finally:
            conn.close()
    return answers


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Token x", "Basic x"])
def test_no_bearer_token_is_401_not_authenticated(api, tenants, authorization):
    for r in refused(api, authorization):
        assert r.status_code == 401, r.text
        assert r.json() == {"detail": "Not authenticated"}
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_prefix_of_the_right_token_is_401(api, tenants):
    c = cluster(api, tenants)
    c.headers()
    # 3 and 7 leave a 40- or 36-character signature (HS256's is 43): whole base64 quanta, so
    # the shorter signature still decodes, and only a signature check refuses it
    for cut in (1, 3, 7, 10, len(c.access_token) // 2):
        for r in refused(api, f"Bearer {c.access_token[:-cut]}"):
            assert r.status_code == 401, r.text
            assert r.json() == {"detail": "Could not validate credentials"}


def test_a_token_signed_with_another_key_is_401(api, tenants):
    user = tenants["webapp-a"]["user"]
    forged = token_for(user.id, "another-key-" + "x" * 40, datetime.now(UTC) + timedelta(hours=1))
    for r in refused(api, f"Bearer {forged}"):
        assert r.status_code == 401, r.text
        assert r.json() == {"detail": "Could not validate credentials"}
    good = token_for(user.id, signing_key(), datetime.now(UTC) + timedelta(hours=1))
    assert projects_list(api, good).status_code == 200  # the control: same claims, right key


def test_an_expired_token_is_401(api, tenants):
    user = tenants["webapp-a"]["user"]
    expired = token_for(user.id, signing_key(), datetime.now(UTC) - timedelta(seconds=5))
    for r in refused(api, f"Bearer {expired}"):
        assert r.status_code == 401, r.text
        assert r.json() == {"detail": "Could not validate credentials"}


def test_a_token_of_a_user_that_no_longer_exists_is_401(api, tenants, cs_home):
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import add_user

    stub = tenants["webapp-a"]["stub"]
    user, password = add_user(store_at(cs_home), "webapp-gone", stub.url, stub.token)
    c = Cluster(api, "webapp-gone", password)
    c.headers()
    assert projects_list(api, c.access_token).status_code == 200
    assert store_at(cs_home).delete_user("webapp-gone")
    assert projects_list(api, c.access_token).status_code == 401


# ---- projects ------------------------------------------------------------------------------


def project(owner: str, title: str, repo_url: str | None = None, **fields: Any) -> dict:
    """A project as C/S's web app serializes it for SyncProjects (decimals as strings)."""
    return {
        "title": title,
        "owner": owner,
        "oneliner": "",
        "description": "",
        "repo_url": repo_url,
        "repo_tag": "v1",
        "latest_tag": "v1",
        "exp_task_time": 1,
        "server_cost": "0.1",
        "cpu": "1.0",
        "memory": "0.5",
        "listed": True,
        "cluster_type": "single-core",
        "status": "running",
        "tech": "python-paramtools",
        "callable_name": None,
        "app_location": None,
        **fields,
    }


def test_sync_answers_the_projects_with_ids_and_lists_them_paginated(api, tenants):
    c = cluster(api, tenants, "webapp-b")
    names = [f"Listed-{i}" for i in range(32)]
    ok, data = c.sync_projects([project("v1list", n) for n in names])
    assert ok and [p["title"] for p in data] == names
    assert all(isinstance(p["id"], int) for p in data)
    assert set(data[0]) == {
        "id", "owner", "title", "tech", "callable_name", "app_location", "exp_task_time",
        "cpu", "memory", "repo_tag", "repo_url",
    }  # fmt: skip
    assert data[0]["cpu"] == 1.0 and data[0]["exp_task_time"] == 1
    page = httpx.get(f"{api}/api/v1/projects/", headers=c.headers()).json()
    assert page["count"] == 32 and len(page["results"]) == 30 and page["previous"] is None
    rest = httpx.get(page["next"], headers=c.headers()).json()
    assert [p["title"] for p in rest["results"]] == names[30:] and rest["next"] is None
    assert rest["previous"].endswith("/api/v1/projects/?page=0")
    ok, again = c.sync_projects([project("v1list", "Listed-0", exp_task_time=5)])
    assert again[0]["id"] == data[0]["id"] and again[0]["exp_task_time"] == 5


@pytest.mark.parametrize(
    "body, loc",
    [
        ([{"owner": "o", "title": "t"}], ["body", 0, "tech"]),
        ([project("o", "t", exp_task_time="soon")], ["body", 0, "exp_task_time"]),
        ({"owner": "o"}, ["body"]),
    ],
)
def test_sync_refuses_what_cs_schema_refuses_with_422(api, tenants, body, loc):
    headers = cluster(api, tenants).headers()
    r = httpx.post(f"{api}/api/v1/projects/sync/", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


NOT_JSON = [
    (b"{not json", "application/json"),
    (b"[1,", "application/json"),
    (b"", "application/json"),
    (b"null", None),
    (b"hello", "text/plain"),
    (b'{"task_name": "version"}', "text/plain"),
]


class CsTask(BaseModel):
    """C/S's schemas.Task."""

    task_id: str | None = None
    task_name: str
    task_kwargs: dict
    tag: str


class CsProjectSync(BaseModel):
    """The required part of C/S's schemas.ProjectSync (enough for a body's first error)."""

    owner: str
    title: str


def cs_fastapi() -> FastAPI:
    """C/S's two body-taking routes as its FastAPI service declared them; the FastAPI of its
    time parsed a body without a content type as JSON (today's `strict_content_type=False`)."""
    app = FastAPI(strict_content_type=False)

    @app.post("/jobs/{owner}/{title}/", status_code=201)
    def create_job(owner: str, title: str, task: Annotated[CsTask, Body()]) -> dict:
        return {}

    @app.post("/projects/sync/")
    def sync_projects(projects: Annotated[list[CsProjectSync], Body()]) -> list:
        return []

    return app


def fastapi_answers(path: str, raw: bytes, content_type: str | None) -> tuple[int, Any]:
    """What C/S's FastAPI service answers `raw` with."""
    from fastapi.testclient import TestClient

    headers = {"content-type": content_type} if content_type else {}
    r = TestClient(cs_fastapi()).post(path, content=raw, headers=headers)
    return r.status_code, r.json()


@pytest.mark.parametrize("raw, content_type", NOT_JSON)
@pytest.mark.parametrize("path", ["/jobs/nobody/Nothing/", "/projects/sync/"])
def test_a_body_that_is_not_json_is_answered_as_fastapi_answers_it(
    api, tenants, path, raw, content_type
):
    """422 with FastAPI's own detail list (json_invalid at its offset, missing, the schema's
    type error), compared with a FastAPI app's answer, not with a copy of its words."""
    headers = {**cluster(api, tenants).headers()}
    if content_type:
        headers["content-type"] = content_type
    r = httpx.post(f"{api}/api/v1{path}", content=raw, headers=headers)
    assert (r.status_code, r.json()) == fastapi_answers(path, raw, content_type), r.text


def test_v0_still_answers_400_to_a_body_that_is_not_json(api):
    r = httpx.post(
        f"{api}/nobody/Nothing/",
        content=b"{not json",
        headers={"Authorization": f"Bearer {V0_TOKEN}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and "body is not JSON" in r.json()["error"], r.text


def test_one_web_app_neither_sees_nor_syncs_anothers_projects(api, tenants):
    a, b = cluster(api, tenants, "webapp-a"), cluster(api, tenants, "webapp-b")
    a.sync_projects([project("v1tenants", "Mine")])
    listed = httpx.get(f"{api}/api/v1/projects/", headers=b.headers()).json()["results"]
    assert "Mine" not in [p["title"] for p in listed]
    r = httpx.post(
        f"{api}/api/v1/projects/sync/",
        json=[project("v1tenants", "Mine", exp_task_time=99)],
        headers=b.headers(),
    )
    assert r.status_code == 409 and "another web app" in r.json()["detail"], r.text
    mine = httpx.get(f"{api}/api/v1/projects/", headers=a.headers()).json()["results"]
    assert [p["exp_task_time"] for p in mine if p["title"] == "Mine"] == [1]
    r = httpx.post(
        f"{api}/api/v1/jobs/v1tenants/Mine/",
        json={"task_name": "version", "tag": "v1", "task_kwargs": {}},
        headers=b.headers(),
    )
    assert r.status_code == 404 and r.json() == {"detail": "Project not found."}, r.text


# ---- jobs: version, defaults, parse, sim to the web app that owns the project --------------

BEHAVE_OK = {"control": {"behavior": [{"value": "ok"}]}}


@pytest.fixture(scope="module")
def published(platform, repos) -> str:
    """The misbehaving sample app under an owner of this module's, published once; its repo."""
    from prefect_cs.testing.models import make_repo, publish_model, register_model

    repo = make_repo("misbehaving-app", repos / "v1-misbehaving")
    register_model(
        "v1tests", "Misbehaving", repo, repo_tag="v1", time_limit=8, expected_task_time=1
    )
    state = publish_model("v1tests", "Misbehaving")
    assert state.is_completed(), state.message
    return str(repo)


@pytest.fixture(scope="module")
def worker(platform) -> Iterator[Background]:
    from prefect_cs.services.stack_parts import process_worker

    bg = process_worker()
    bg.start()
    yield bg
    bg.stop()


@pytest.fixture(scope="module")
def owned(api, tenants, published) -> Cluster:
    """webapp-a's Cluster once its sync of v1tests/Misbehaving has reached the registry."""
    from prefect_cs.blocks.model_config import ModelConfig

    a = cluster(api, tenants, "webapp-a")
    ok, _ = a.sync_projects([project("v1tests", "Misbehaving", published)])
    assert ok
    block = tenants["webapp-a"]["user"].webapp
    until(
        lambda: ModelConfig.for_model("v1tests", "Misbehaving").webapp == block,
        60,
        "the sync applied to the registry",
    )
    return a


def post_job(c: Cluster, task_name: str, **task_kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{c.url}/api/v1/jobs/v1tests/Misbehaving/",
        json={"task_name": task_name, "tag": "v1", "task_kwargs": task_kwargs},
        headers=c.headers(),
        timeout=30,
    )


def test_version_is_a_finished_job_in_cs_job_schema(owned, tenants):
    r = post_job(owned, "version")
    assert r.status_code == 201, r.text
    job = r.json()
    assert set(job) == {
        "id", "user_id", "created_at", "name", "finished_at", "status", "inputs", "outputs",
        "traceback", "tag",
    }  # fmt: skip
    assert job["name"] == "version" and job["status"] == "SUCCESS" and job["tag"] == "v1"
    assert job["outputs"]["version"] == "0.3.0" and job["user_id"] == tenants["webapp-a"]["user"].id


def test_a_task_that_does_not_fit_cs_task_schema_is_422(owned):
    r = httpx.post(
        f"{owned.url}/api/v1/jobs/v1tests/Misbehaving/",
        json={"task_name": "version", "task_kwargs": {}},
        headers=owned.headers(),
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tag"], r.text


def test_defaults_are_put_to_the_owners_model_config_api(owned, tenants, task_worker):
    stub, other = tenants["webapp-a"]["stub"], tenants["webapp-b"]["stub"]
    job_id = owned.submit_job("v1tests", "Misbehaving", "defaults", {"meta_param_dict": {}}, "v1")
    put = stub.first_about(job_id, timeout=60)
    assert put.path == "/model-config/api/" and put.status == 200
    bearer = put.headers["Authorization"].removeprefix("Bearer ")
    assert bearer in stub.issued, "a bearer token the web app's /o/token/ handed out"
    assert stub.token_requests(), "got with the OAuth application's client credentials"
    assert put.body["status"] == "SUCCESS" and "control" in put.body["outputs"]["model_parameters"]
    assert not other.about(job_id)


def test_parse_is_put_to_the_owners_inputs_api(owned, tenants, task_worker):
    stub = tenants["webapp-a"]["stub"]
    kwargs = {"meta_param_dict": {}, "adjustment": BEHAVE_OK, "errors_warnings": {}}
    job_id = owned.submit_job("v1tests", "Misbehaving", "parse", kwargs, "v1")
    put = stub.first_about(job_id, timeout=90)
    assert put.path == "/inputs/api/" and put.status == 200 and put.body["status"] == "SUCCESS"


def test_a_sim_ends_in_one_accepted_put_at_the_owners_web_app(owned, tenants, worker):
    stub, other = tenants["webapp-a"]["stub"], tenants["webapp-b"]["stub"]
    kwargs = {"meta_param_dict": {}, "adjustment": BEHAVE_OK}
    job_id = owned.submit_job("v1tests", "Misbehaving", "sim", kwargs, "v1")
    stub.first_about(job_id, timeout=180)
    body = stub.only_put(job_id, "/outputs/api/")
    assert body["status"] == "SUCCESS" and body["model_version"] == "0.3.0"
    assert not other.about(job_id)


TASK_COMPLETE = {  # C/S's TaskComplete as cs-jobs posted it
    "task_name": "sim", "status": "SUCCESS", "meta": {"task_times": [1.0]},
    "model_version": "9.9.9", "version": "v1",
    "outputs": {"renderable": {"outputs": []}, "downloadable": {"outputs": []}},
}  # fmt: skip


def callback(c: Cluster, method: str, job_id: str, **kw: Any) -> httpx.Response:
    url = f"{c.url}/api/v1/jobs/callback/{job_id}/"
    return httpx.request(method, url, headers=c.headers(), timeout=30, **kw)


def test_the_job_callback_lets_no_one_post_a_result(owned, tenants):
    """C/S's job posted its result to /jobs/callback/ID/ with no credentials; here no one can:
    no token 401, another web app 404, the owner 403, a finished job 400, as C/S's words."""
    stub, other = tenants["webapp-a"]["stub"], cluster(owned.url, tenants, "webapp-b")
    job_id = owned.submit_job("v1tests", "Misbehaving", "defaults", {"meta_param_dict": {}}, "v1")
    url = f"{owned.url}/api/v1/jobs/callback/{job_id}/"
    assert httpx.post(url, json=TASK_COMPLETE).status_code == 401
    assert httpx.get(url).status_code == 401
    for method in ("GET", "POST"):
        r = callback(other, method, job_id, json=TASK_COMPLETE)
        assert r.status_code == 404 and r.json() == {"detail": "Job not found."}, r.text
    read = callback(owned, "GET", job_id)
    assert read.status_code == 201 and read.json()["id"] == job_id, read.text
    assert read.json()["name"] == "defaults" and read.json()["status"] == "CREATED"
    r = callback(owned, "POST", job_id, json=TASK_COMPLETE)
    assert r.status_code == 403 and "takes no result" in r.json()["detail"], r.text
    r = callback(owned, "POST", job_id, json={"status": "SUCCESS"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "meta"], r.text
    assert not [p for p in stub.about(job_id) if p.path in ("/outputs/api/", "/inputs/api/")]
    finished = post_job(owned, "version").json()["id"]
    r = callback(owned, "GET", finished)
    assert r.status_code == 403 and r.json()["detail"].startswith("No permission"), r.text
    r = callback(owned, "POST", finished, json=TASK_COMPLETE)
    assert r.status_code == 400 and r.json() == {"detail": "Job already marked as complete."}


# ---- builds: publish from the web app ------------------------------------------------------


@pytest.fixture(scope="module")
def publish_deployment(platform):
    from prefect_cs.deployments.deploy import deploy_publish

    return deploy_publish()


def final_build(c: Cluster, build_id: int, timeout: float = 900) -> dict:
    """The build once it ended: a publish took 75 s alone and over 420 s on a loaded CI machine."""
    return until(
        lambda: (
            (b := c.refresh_build(build_id))["status"] in ("success", "failure", "cancelled") and b
        ),
        timeout,
        f"build {build_id} to end",
    )


def test_a_build_publishes_the_projects_tag_reports_its_stages_and_tells_the_web_app(
    owned, tenants, published, publish_deployment, worker
):
    from pathlib import Path

    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.testing.models import add_tag

    add_tag(Path(published), "v2", "second release")
    ok, _ = owned.sync_projects([project("v1tests", "Misbehaving", published, repo_tag="v2")])
    started = owned.start_build("v1tests", "Misbehaving")
    assert started["status"] == "created" and isinstance(started["id"], int)
    assert datetime.fromisoformat(started["created_at"])
    build = final_build(owned, started["id"])
    assert build["status"] == "success", build
    assert build["failed_at_stage"] is None and build["finished_at"]
    assert build["image_tag"] == "v2" and build["version"] == "0.3.0"
    data = build["provider_data"]
    assert data["stage"] == "promote"
    assert {log["stage"] for log in data["logs"]} >= {"build", "test", "promote"}
    assert all(isinstance(log["logs"], str) and log["logs"] for log in data["logs"])
    assert ModelConfig.for_model("v1tests", "Misbehaving").latest_tag == "v2"
    stub = tenants["webapp-a"]["stub"]
    path = f"/projects/api/v1/builds/{started['id']}/?cluster_id=true"
    (told,) = until(lambda: [r for r in stub.accepted(path)], 30, "the build_done PUT")
    assert told.body["cluster_build_id"] == started["id"] and told.body["status"] == "success"
    assert told.body["tag"] == {"image_tag": "v2", "version": "0.3.0"}
    assert told.body["project"] == "v1tests/Misbehaving"
    other = cluster(owned.url, tenants, "webapp-b")
    r = httpx.get(f"{owned.url}/api/v1/builds/{started['id']}/", headers=other.headers())
    assert r.status_code == 404 and r.json() == {"detail": "Build not found."}


def test_a_build_whose_tests_fail_stops_at_test_and_leaves_the_promoted_tag(
    owned, tenants, published, publish_deployment, worker
):
    from pathlib import Path

    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.testing.models import add_tag

    def break_tests(repo: Path) -> None:
        failing = repo / "cs-config" / "cs_config" / "tests" / "test_broken.py"
        failing.write_text("def test_broken():\n    assert False, 'broken on purpose'\n")

    serving = ModelConfig.for_model("v1tests", "Misbehaving").latest_tag
    add_tag(Path(published), "v3-broken", "a release whose tests fail", break_tests)
    owned.sync_projects([project("v1tests", "Misbehaving", published, repo_tag="v3-broken")])
    started = owned.start_build("v1tests", "Misbehaving")
    build = final_build(owned, started["id"])
    assert build["status"] == "failure" and build["failed_at_stage"] == "test", build
    assert build["version"] is None and build["provider_data"]["stage"] == "test"
    test_logs = [log["logs"] for log in build["provider_data"]["logs"] if log["stage"] == "test"]
    assert test_logs and ("broken on purpose" in test_logs[0] or "test_broken" in test_logs[0])
    assert ModelConfig.for_model("v1tests", "Misbehaving").latest_tag == serving


def test_cancelling_a_build_cancels_its_flow_run(owned, publish_deployment):
    from prefect.client.orchestration import get_client

    started = owned.start_build("v1tests", "Misbehaving")
    r = httpx.delete(f"{owned.url}/api/v1/builds/{started['id']}/", headers=owned.headers())
    assert r.status_code == 201 and r.json()["status"] == "cancelled", r.text
    assert r.json()["cancelled_at"]
    run_id = r.json()["provider_data"]["flow_run_id"]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state.type.value in ("CANCELLING", "CANCELLED"), state
    assert owned.refresh_build(started["id"])["status"] == "cancelled"


def test_an_api_restarted_mid_build_tells_the_web_app_once_without_a_get(
    owned, tenants, published, publish_deployment, worker
):
    """The API that started a build is stopped while it runs; two APIs started after it (on
    the same store) watch it again, and build_done reaches the web app exactly once, with no
    GET of the build from anyone; a third API started after the end sends nothing more."""
    from pathlib import Path

    from prefect_cs.testing.models import add_tag

    add_tag(Path(published), "v4", "a release built across a restart")
    owned.sync_projects([project("v1tests", "Misbehaving", published, repo_tag="v4")])
    stub = tenants["webapp-a"]["stub"]
    worker.stop()  # the build waits for a worker: it cannot end before its API is stopped
    try:
        with serving(free_port()) as first:
            c = Cluster(first, "webapp-a", tenants["webapp-a"]["password"])
            started = c.start_build("v1tests", "Misbehaving")
        path = f"/projects/api/v1/builds/{started['id']}/?cluster_id=true"
        early = [r.body for r in stub.accepted(path)]
        assert not early, f"the build ended before its API was stopped: {early}"
    finally:
        worker.start()
    with serving(free_port()), serving(free_port()):
        told = until(lambda: stub.accepted(path), 900, "build_done after the restart")
    assert len(told) == 1 and told[0].body["cluster_build_id"] == started["id"]
    # v4 is tagged on the module's last commit: after the broken-tests build it fails at test
    assert told[0].body["status"] in ("success", "failure"), told[0].body
    with serving(free_port()) as third:
        again = Cluster(third, "webapp-a", tenants["webapp-a"]["password"])
        assert again.refresh_build(started["id"])["status"] == told[0].body["status"]
    assert len(stub.accepted(path)) == 1


# ---- secrets: the project's owner, through its web app -------------------------------------


def secrets_call(c: Cluster, method: str, name: str = "", acting: str = "v1tests", **kw):
    path = f"{c.url}/api/v1/projects/v1tests/Misbehaving/secrets/" + (f"{name}/" if name else "")
    headers = {**c.headers(), "X-CS-User": acting}
    return httpx.request(method, path, headers=headers, timeout=30, **kw)


def test_the_owner_sets_lists_and_deletes_a_models_secrets_and_never_reads_a_value(owned, tenants):
    import secrets as random

    from prefect_cs.security.secrets import get_backend

    value = "v1-secret-" + random.token_urlsafe(24)
    r = secrets_call(owned, "PUT", "MAINTAINER_KEY", json={"value": value})
    assert r.status_code == 200 and r.json() == {"name": "MAINTAINER_KEY", "set": True}, r.text
    assert get_backend("v1tests/Misbehaving").get("MAINTAINER_KEY") == value
    listed = secrets_call(owned, "GET")
    assert listed.status_code == 200 and listed.json() == {"secrets": ["MAINTAINER_KEY"]}
    assert value not in listed.text
    r = secrets_call(owned, "DELETE", "MAINTAINER_KEY")
    assert r.status_code == 200 and r.json() == {"name": "MAINTAINER_KEY", "deleted": True}
    assert secrets_call(owned, "GET").json() == {"secrets": []}
    assert secrets_call(owned, "DELETE", "MAINTAINER_KEY").status_code == 404
    for log in API_LOGS:
        assert value not in log.read_text(errors="replace")


def test_secrets_refused_to_others_and_to_platform_names(owned, tenants):
    r = secrets_call(owned, "PUT", "KEY", acting="someone-else", json={"value": "x"})
    assert r.status_code == 403, r.text
    assert secrets_call(owned, "GET", acting="").status_code == 403
    other = cluster(owned.url, tenants, "webapp-b")
    r = secrets_call(other, "PUT", "KEY", json={"value": "x"})
    assert r.status_code == 404 and r.json() == {"detail": "Project not found."}, r.text
    r = secrets_call(owned, "PUT", "PREFECT_API_KEY", json={"value": "x"})
    assert r.status_code == 400 and "platform variables" in r.json()["detail"], r.text
    r = secrets_call(owned, "PUT", "KEY", json={"value": ""})
    assert r.status_code == 400 and "non-empty" in r.json()["detail"], r.text
    r = secrets_call(owned, "PUT", "KEY", json={})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "value"], r.text


def test_an_operator_adds_a_web_apps_cluster_user_with_the_cli_and_it_logs_in(api, tenants):
    from prefect_cs.cli.main import app
    from prefect_cs.security.secrets import get_backend
    from typer.testing import CliRunner

    stub = tenants["webapp-b"]["stub"]
    runner = CliRunner()
    added = runner.invoke(
        app,
        ["api", "users", "add", "webapp-cli", "--url", stub.url, "--webapp-token-stdin"],
        input=stub.token + "\n",
    )
    assert added.exit_code == 0, added.output
    password = get_backend(None).get("CLUSTER_USER_webapp-cli_PASSWORD")
    assert password not in added.output and stub.token not in added.output
    assert "webapp-cli" in runner.invoke(app, ["api", "users", "list"]).output
    c = Cluster(api, "webapp-cli", password)
    assert projects_list(api, c.headers()["Authorization"].split()[1]).status_code == 200
    assert runner.invoke(app, ["api", "users", "delete", "webapp-cli"]).exit_code == 0
    assert projects_list(api, c.access_token).status_code == 401
    with pytest.raises(ClusterLoginException):
        Cluster(api, "webapp-cli", password).headers()


def test_an_operator_adds_an_oauth_web_app_with_the_cli(api, tenants):
    """C/S v1's way: the web app's OAuth application (client id, secret from stdin); the secret
    is in no output; half an OAuth client is refused naming both flags."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.cli.main import app
    from prefect_cs.services.api_v1.tenants import webapp_block
    from typer.testing import CliRunner

    stub = tenants["webapp-a"]["stub"]
    runner = CliRunner()
    argv = ["api", "users", "add", "webapp-oauth-cli", "--url", stub.url]
    half = runner.invoke(app, [*argv, "--client-id", stub.client_id])
    assert half.exit_code != 0 and "--client-secret-stdin" in half.output, half.output
    added = runner.invoke(
        app,
        [*argv, "--client-id", stub.client_id, "--client-secret-stdin"],
        input=stub.client_secret + "\n",
    )
    assert added.exit_code == 0, added.output
    assert stub.client_secret not in added.output
    block = WebApp.load(webapp_block("webapp-oauth-cli").partition("/")[2])
    assert block.client_id == stub.client_id and block.token is None
    assert block.authorization().removeprefix("Bearer ") in stub.issued
    assert runner.invoke(app, ["api", "users", "delete", "webapp-oauth-cli"]).exit_code == 0
