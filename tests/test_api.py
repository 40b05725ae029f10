"""The cluster API as its own process (`prefect-cs api serve`), called the way Compute Studio does.

Real parts: the session's Prefect server, the published sample apps, the inputs
task worker, a process worker and the web app stand-in. The client is httpx with
C/S's own bodies; the server is the command an operator runs, with its token
read from the cluster's secrets store.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect_cs.services.stack_parts import process_worker
from prefect_cs.services.supervisor import Background
from prefect_cs.testing.api_process import serving_api

TOKEN = "cluster-api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BEHAVE_OK = {"control": {"behavior": [{"value": "ok"}]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy, or fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g}s")


def serving(port: int):
    """`prefect-cs api serve` on `port`; its token is the cluster secret CLUSTER_API_TOKEN."""
    return serving_api("cluster-api-tests", port, v0_token=TOKEN)


@pytest.fixture(scope="module")
def api(platform) -> Iterator[str]:
    with serving(free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def worker(platform) -> Iterator[Background]:
    bg = process_worker()
    bg.start()
    yield bg
    bg.stop()


@pytest.fixture
def client(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


def task(name: str, tag: str | None = None, task_id: str | None = None, **kwargs: Any) -> dict:
    """The body C/S's compute.py sends."""
    body: dict[str, Any] = {"task_name": name, "tag": tag, "task_kwargs": kwargs}
    if task_id:
        body["task_id"] = task_id
    return body


# ---- auth and the open pages ----------------------------------------------------------


def test_health_and_openapi_need_no_token(api):
    assert httpx.get(f"{api}/health").json() == {"status": "ok"}
    schema = httpx.get(f"{api}/openapi.json").json()
    assert "/{owner}/{title}/" in schema["paths"] and "/sync/" in schema["paths"]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Token {TOKEN}", TOKEN])
def test_without_the_bearer_token_401(api, misbehaving, header):
    headers = {"Authorization": header} if header else {}
    for method, path, body in [
        ("POST", "/tests/Misbehaving/", task("version")),
        ("POST", "/sync/", []),
        ("GET", "/sync/last", None),
        ("GET", "/tests/Misbehaving/runs/3f0c1a52-5b7e-4d2a-9c1e-2a6f3e1d9b40", None),
    ]:
        r = httpx.request(method, api + path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


# ---- version and defaults: in the body ---------------------------------------------------


def test_version_and_defaults_answered_in_the_body(client, misbehaving, task_worker):
    r = client.post("/tests/Misbehaving/", json=task("version"))
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "0.3.0" and r.json()["status"] == "SUCCESS"
    assert len(r.json()["meta"]["task_times"]) == 1
    r = client.post("/tests/Misbehaving/", json=task("defaults", "v1", meta_param_dict={}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "SUCCESS" and "control" in body["model_parameters"]
    assert body["meta_parameters"] == {}


def test_a_failing_get_inputs_is_a_fail_answered_200(client, misbehaving, task_worker):
    r = client.post(
        "/tests/Misbehaving/", json=task("defaults", meta_param_dict={"behavior": "raise"})
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "FAIL" and "exploded on purpose" in r.json()["traceback"]


# ---- sim: acknowledged at once, one run per task id, one PUT -------------------------


def runs_of(task_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"task:{task_id}"]))
        )


def test_sim_retried_with_its_task_id_makes_one_run_and_one_put(
    client, misbehaving, webapp, worker
):
    task_id = str(uuid.uuid4())
    body = task("sim", "v1", task_id, meta_param_dict={}, adjustment=BEHAVE_OK)
    for _ in range(3):  # C/S retries a POST it did not see answered in time
        r = client.post("/tests/Misbehaving/", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"task_id": task_id}
    until(lambda: runs_of(task_id), 60, "the acknowledged sim's flow run")
    webapp.first_about(task_id, timeout=120)
    status = until(
        lambda: (
            (s := client.get(f"/tests/Misbehaving/runs/{task_id}").json())["state"]
            in ("COMPLETED", "FAILED", "CRASHED")
            and s
        ),
        60,
        "the run's final state",
    )
    assert status["state"] == "COMPLETED", status
    assert status["status"] == "SUCCESS" and status["delivered"] is True
    assert {o["category"] for o in status["outputs"]} == {"renderable", "downloadable"}
    puts = [r for r in webapp.accepted("/outputs/api/") if r.body.get("task_id") == task_id]
    assert len(puts) == 1 and puts[0].body["status"] == "SUCCESS"
    assert len(runs_of(task_id)) == 1


def keep_pending_sim(port: int, owner: str, title: str) -> tuple[str, Path]:
    """A sim the API on `port` acknowledged and kept, as a crash leaves it."""
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.pending_queue import write_private

    task_id = str(uuid.uuid4())
    folder = get_settings().home / "api" / f"pending-{port}" / "sim"
    folder.mkdir(parents=True, mode=0o700)
    request = {"task_id": task_id, "owner": owner, "title": title, "tag": "v1"}
    request["inputs"] = [{}, BEHAVE_OK]
    write_private(path := folder / f"{task_id}.json", json.dumps(request).encode())
    return task_id, path


def test_a_sim_acknowledged_before_a_crash_is_started_when_the_api_starts_again(misbehaving):
    port = free_port()
    task_id, kept = keep_pending_sim(port, "tests", "Misbehaving")
    with serving(port) as url:
        status = httpx.get(f"{url}/tests/Misbehaving/runs/{task_id}", headers=AUTH).json()
        assert status["state"] in ("ACCEPTED", "SCHEDULED", "PENDING", "RUNNING", "COMPLETED")
        until(lambda: runs_of(task_id), 60, "the flow run of the sim left pending")
        until(lambda: not kept.exists(), 10, "the pending file removed once the run exists")
    assert len(runs_of(task_id)) == 1


def test_a_sim_that_cannot_be_started_gets_one_platform_fail_put(platform, webapp):
    port = free_port()
    task_id, kept = keep_pending_sim(port, "tests", "Unregistered")  # gone since it was kept
    with serving(port):
        put = webapp.first_about(task_id, timeout=60)
        until(lambda: not kept.exists(), 10, "the pending file removed once answered")
    assert put.path == "/outputs/api/" and put.body["status"] == "FAIL", put.body
    assert put.body["traceback"].startswith("platform error, not your model"), put.body
    assert "acknowledged this sim but could not start it" in put.body["traceback"]
    assert "tests/Unregistered is not registered" in put.body["traceback"]
    time.sleep(1)
    assert (
        len([r for r in webapp.received("/outputs/api/") if r.body.get("task_id") == task_id]) == 1
    )


def test_sim_without_task_id_gets_a_new_one(client, misbehaving):
    r = client.post("/tests/Misbehaving/", json=task("sim", adjustment=BEHAVE_OK))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    assert str(uuid.UUID(task_id)) == task_id
    assert len(until(lambda: runs_of(task_id), 60, "the acknowledged sim's flow run")) == 1


def parse_task_runs(name: str = "inputs-parse") -> set:
    """The newest parse (or `name`) task runs (a delay() creates one at once)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as c:
        found = c.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )
    return {r.id for r in found}


def test_parse_acknowledged_then_put_to_inputs_api(client, paramtools, task_worker, webapp):
    task_id = str(uuid.uuid4())
    before = parse_task_runs()
    body = task(
        "parse",
        task_id=task_id,
        meta_param_dict={},
        adjustment={"params": {"a": [{"value": 3}]}},
        errors_warnings={"GUI": {"errors": {}, "warnings": {}}},
    )
    for _ in range(2):
        r = client.post("/tests/ParamTools/", json=body)
        assert r.status_code == 200 and r.json() == {"task_id": task_id}, r.text
    put = webapp.first_about(task_id, timeout=60)
    assert put.path == "/inputs/api/" and put.body["status"] == "SUCCESS"
    assert "errors_warnings" in put.body["outputs"]
    assert len(parse_task_runs() - before) == 1  # the retried POST made no second parse


def test_parse_passes_the_web_apps_errors_warnings_to_validate_inputs(
    client, paramtools, task_worker, webapp
):
    """C/S's parser puts what it found itself (an unknown section) in its "API" section and
    marks a parse INVALID when the answer has errors: the model gets them and its answer is sent
    as it returned them (the cluster used to build its own from the model's sections only)."""
    task_id = str(uuid.uuid4())
    sent = {
        "GUI": {"errors": {}, "warnings": {}},
        "API": {"errors": {"nosuch": ["unknown section nosuch"]}, "warnings": {}},
    }
    body = task("parse", task_id=task_id, meta_param_dict={}, adjustment={}, errors_warnings=sent)
    assert client.post("/tests/ParamTools/", json=body).json() == {"task_id": task_id}
    put = webapp.first_about(task_id, timeout=60)
    assert put.body["status"] == "SUCCESS", put.body
    returned = put.body["outputs"]["errors_warnings"]
    assert returned["API"] == sent["API"] and returned["GUI"] == sent["GUI"]
    assert "policy" in returned  # the model's own sections are there for it to fill


def test_inputs_parse_on_the_cli_passes_errors_warnings_as_the_web_app_does(
    paramtools, task_worker, tmp_path
):
    """`prefect-cs inputs parse -e`: an operator checks an adjustment with the web app's own
    findings, as C/S sends them, and sees what the model returns for them."""
    from prefect_cs.cli.main import app
    from typer.testing import CliRunner

    sent = {
        "GUI": {"errors": {}, "warnings": {}},
        "API": {"errors": {"x": ["seen"]}, "warnings": {}},
    }
    (tmp_path / "ew.json").write_text(json.dumps(sent))
    args = ["inputs", "parse", "tests/ParamTools", "-a", "{}", "-e", str(tmp_path / "ew.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["status"] == "SUCCESS", answer
    assert answer["outputs"]["errors_warnings"]["API"] == sent["API"], answer


# ---- the web app's own client ----------------------------------------------------------


def test_a_compute_studio_client_gets_every_answer_within_its_rules(
    api, misbehaving, paramtools, task_worker, webapp, worker
):
    """requests, 1.7 s per attempt, five attempts, only a 200 counts: C/S's compute.py."""
    from prefect_cs.testing.cs_client import ComputeStudioClient

    cs = ComputeStudioClient(api, TOKEN)
    version = cs.submit_job("tests", "Misbehaving", "version", {})
    assert version["status"] == "SUCCESS" and version["version"] == "0.3.0"
    defaults = cs.submit_job("tests", "Misbehaving", "defaults", {"meta_param_dict": {}})
    assert defaults["status"] == "SUCCESS" and "control" in defaults["model_parameters"]
    parse_id = str(uuid.uuid4())
    parse = {"meta_param_dict": {}, "adjustment": {"params": {"a": [{"value": 2}]}}}
    parse["errors_warnings"] = {"GUI": {"errors": {}, "warnings": {}}}
    assert cs.submit_job("tests", "ParamTools", "parse", parse, task_id=parse_id) == {
        "task_id": parse_id
    }
    sim_id = str(uuid.uuid4())
    sim = {"meta_param_dict": {}, "adjustment": BEHAVE_OK}
    assert cs.submit_job("tests", "Misbehaving", "sim", sim, "v1", sim_id) == {"task_id": sim_id}
    assert webapp.first_about(parse_id, timeout=60).path == "/inputs/api/"
    webapp.first_about(sim_id, timeout=120)
    time.sleep(1)  # a second PUT, were there one, would have come by now
    puts = [r for r in webapp.received("/outputs/api/") if r.body.get("task_id") == sim_id]
    assert [r.body["status"] for r in puts] == ["SUCCESS"]
    assert len(cs.attempts_made) == 4 and max(cs.attempts_made) <= 5


def test_a_sim_on_a_tag_not_published_gets_one_fail_put_naming_the_published_tags(
    client, misbehaving, webapp
):
    """A 404 was retried five times by C/S and left the simulation STARTED with no word."""
    task_id = str(uuid.uuid4())
    body = task("sim", "v9", task_id, meta_param_dict={}, adjustment=BEHAVE_OK)
    for _ in range(3):  # C/S retries what it did not see answered in time
        r = client.post("/tests/Misbehaving/", json=body)
        assert (r.status_code, r.json()) == (200, {"task_id": task_id}), r.text
    put = webapp.first_about(task_id, timeout=60)
    assert put.path == "/outputs/api/" and put.body["status"] == "FAIL", put.body
    assert "no published tag 'v9' (published: v1)" in put.body["traceback"]
    assert "models publish tests/Misbehaving --tag v9" in put.body["traceback"]
    time.sleep(2)  # a second PUT or a run, were there one, would have come by now
    assert (
        len([r for r in webapp.received("/outputs/api/") if r.body.get("task_id") == task_id]) == 1
    )
    assert not runs_of(task_id)


# ---- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/tests/NoSuchModel/", task("sim", adjustment=BEHAVE_OK), "not registered"),
        ("/tests/NoSuchModel/", task("version"), "not registered"),
        ("/tests/Misbehaving/", task("defaults", "v9"), "no published tag 'v9'"),
        ("/tests/Misbehaving/", task("explode"), "unknown task_name 'explode'"),
        ("/tests/bad.name/", task("version"), "unknown model"),
    ],
)
def test_unknown_model_tag_or_task_name_404(client, misbehaving, path, body, reason):
    r = client.post(path, json=body)
    assert r.status_code == 404, r.text
    assert reason in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"[]", "body must be a JSON object"),
        (b'{"tag": null}', "task_name must be one of"),
        (b'{"task_name": "sim", "task_kwargs": []}', "task_kwargs must be a JSON object"),
        (b'{"task_name": "sim", "task_kwargs": {"adjustment": 3}}', "task_kwargs.adjustment"),
        (b'{"task_name": "sim", "tag": 1}', "tag must be"),
        (b'{"task_name": "sim", "task_id": "../../x"}', "invalid task_id"),
    ],
)
def test_malformed_body_400_naming_the_problem(client, misbehaving, body, reason):
    r = client.post(
        "/tests/Misbehaving/", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]


def test_body_over_the_cap_413(client, misbehaving):
    big = task("sim", adjustment={"x": ["y" * (5 * 1024 * 1024)]})
    r = client.post("/tests/Misbehaving/", json=big)
    assert r.status_code == 413 and "CS_API_MAX_BODY_BYTES" in r.json()["error"]


def nested(depth: int) -> Any:
    """A value `depth` levels deep (lists, as a hostile body would be: cheapest per level)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("path", ["/tests/Misbehaving/", "/sync/"])
def test_a_body_nested_past_the_limit_is_400_naming_it_not_a_platform_error(
    client, misbehaving, path
):
    """100,000 levels raised RecursionError in json.loads: a 503 "retry" for the caller's error."""
    body = b'{"task_name": "version", "task_kwargs": {"x": ' + b"[" * 100_000 + b"]" * 100_000
    r = client.post(path, content=body + b"}}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nested 100,002 levels deep, over the limit of 100 (CS_LIMITS_JSON_DEPTH)" in r.text


@pytest.mark.parametrize("name", ["sim", "parse"])
def test_a_too_deep_adjustment_is_refused_before_it_is_acknowledged(
    client, misbehaving, webapp, name
):
    task_id = str(uuid.uuid4())
    body = task(name, "v1", task_id, meta_param_dict={}, adjustment={"control": nested(900)})
    r = client.post("/tests/Misbehaving/", json=body)
    assert r.status_code == 400, r.text
    assert "nested 903 levels deep, over the limit of 100 (CS_LIMITS_JSON_DEPTH)" in r.text
    time.sleep(2)  # an acknowledged request would have made its run or PUT by now
    assert not runs_of(task_id) and not webapp.about(task_id)


def test_a_body_within_the_limit_is_answered(client, misbehaving, task_worker):
    r = client.post("/tests/Misbehaving/", json=task("version", padding=nested(95)))
    assert r.status_code == 200 and r.json()["status"] == "SUCCESS", r.text


# ---- sync: the web app's projects into the registry -----------------------------------


def project(title: str, **fields: Any) -> dict[str, Any]:
    """A project as C/S's projects list carries it (unknown fields included)."""
    return {
        "owner": "synced",
        "title": title,
        "oneliner": "a model",
        "description": "…",
        "repo_url": "https://github.com/PSLmodels/Tax-Cruncher",
        "repo_tag": "v1",
        "latest_tag": "v1",
        "exp_task_time": 12,
        "server_cost": 0.1,
        "cpu": 2,
        "memory": 6,
        "listed": True,
        "cluster_type": "single-core",
        "status": "live",
        **fields,
    }


def synced(client: httpx.Client, body: Any) -> dict[str, Any]:
    """POST /sync/ as C/S does: 200 with an empty body; then what applying it did."""
    r = client.post("/sync/", json=body)
    assert (r.status_code, r.content) == (200, b""), r.text
    sync_id = r.headers["x-cs-sync-id"]

    def report() -> dict[str, Any] | None:
        body = client.get(f"/sync/{sync_id}").json()
        return body if body["status"] != "pending" else None

    return until(report, 60, f"sync {sync_id} applied")


def test_sync_upserts_and_is_idempotent(client, platform):
    from prefect_cs.blocks.model_config import ModelConfig

    title = f"Cruncher-{uuid.uuid4().hex[:6]}"
    assert synced(client, [project(title)])["created"] == [f"synced/{title}"]
    model = ModelConfig.for_model("synced", title)
    assert (model.cpu, model.memory, model.expected_task_time) == (2.0, "6Gi", 12)
    assert (
        model.repo_tag == "v1" and model.latest_tag is None
    )  # the web app's wish is not a promotion
    report = synced(client, [project(title)])
    assert report["unchanged"] == [f"synced/{title}"] and not report["updated"]
    report = synced(client, {"projects": [project(title, memory=0.5, exp_task_time=900)]})
    assert report["updated"] == [f"synced/{title}"]
    model = ModelConfig.for_model("synced", title)
    assert (model.memory, model.expected_task_time, model.time_limit) == ("0.5Gi", 900, 900)


def test_sync_answers_as_compute_studio_16_reads_it_within_its_timeout(client, platform):
    """C/S 1.6's SyncProjects returns on an empty body and reads data["status"] from any other
    (compute.py): a report in the body was a 500 for the project's owner. It sends one project
    per sync and waits 1.7 s: applying (seconds) happens behind the answer."""
    from prefect_cs.blocks.model_config import ModelConfig

    title, took = f"Ack-{uuid.uuid4().hex[:6]}", []
    for memory in [1, 2] * 5:
        started = time.perf_counter()
        r = client.post("/sync/", json=[project(title, memory=memory)])
        took.append(time.perf_counter() - started)
        assert r.status_code == 200 and not r.text, r.text  # `if not response.text: return`
    p95 = sorted(took)[int(0.95 * len(took)) - 1]
    p50 = sorted(took)[len(took) // 2 - 1]
    print(f"/sync/ acknowledged: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    # C/S gives up on an attempt after 1.7 s; the ≤ 100 ms goal is a figure (printed above and
    # by benchmarks), not a timed assertion on a shared CI machine.
    assert max(took) < 1.7, f"slowest {max(took) * 1000:.0f} ms: {[round(t * 1000) for t in took]}"
    last = until(lambda: (b := client.get("/sync/last").json())["pending"] == 0 and b, 120, "all")
    assert last["last"]["projects"] == [f"synced/{title}"] and last["last"]["status"] == "applied"
    assert last["last"]["updated"] == [f"synced/{title}"]  # applied in the order received
    assert ModelConfig.for_model("synced", title).memory == "2Gi"


def test_sync_keeps_published_tags_and_what_projects_do_not_carry(client, misbehaving):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import register

    before = ModelConfig.for_model("tests", "Misbehaving")
    changed = {"owner": "tests", "title": "Misbehaving", "repo_url": before.repo_url, "cpu": 1.5}
    try:
        report = synced(client, [{**changed, "latest_tag": "v7", "repo_tag": ""}])
        assert report["updated"] == ["tests/Misbehaving"], report
        after = ModelConfig.for_model("tests", "Misbehaving")
        assert after.cpu == 1.5
        assert after.published_tags == before.published_tags and after.latest_tag == "v1"
        assert (after.repo_tag, after.time_limit, after.memory) == ("v1", 8, "512Mi")
    finally:
        register(before)


def test_sync_refuses_invalid_names_listing_them_and_writes_nothing(client, platform):
    from prefect_cs.registry.configs import all_models

    good = f"Good-{uuid.uuid4().hex[:6]}"
    projects = [
        project(good),
        project("bad title"),
        project("x", owner="../etc"),
        project("m", memory="lots"),
    ]
    r = client.post("/sync/", json=projects)
    assert r.status_code == 400, r.text
    assert set(r.json()["refused"]) == {"synced/bad title", "../etc/x", "synced/m"}
    assert "invalid title 'bad title'" in r.json()["refused"]["synced/bad title"]
    assert good not in {m.title for m in all_models()}


@pytest.mark.parametrize(
    ("repo_url", "said"),
    [
        ("file:///etc", "resolves to /etc, which is not under CS_LOCAL_REPO_PREFIXES"),
        ("/root", "resolves to /root, which is not under CS_LOCAL_REPO_PREFIXES"),
        ("ext::sh -c id", "remote helper"),
        ("http://github.com/PSLmodels/Tax-Cruncher", "plain http"),
    ],
)
def test_sync_refuses_local_paths_and_other_transports_and_writes_nothing(
    client, platform, repo_url, said
):
    """The clone runs as the platform's user: a project cannot point it at the cluster's files."""
    from prefect_cs.registry.configs import all_models

    good, bad = f"Good-{uuid.uuid4().hex[:6]}", f"Local-{uuid.uuid4().hex[:6]}"
    r = client.post("/sync/", json=[project(good), project(bad, repo_url=repo_url)])
    assert r.status_code == 400, r.text
    assert said in r.json()["refused"][f"synced/{bad}"]
    assert not {good, bad} & {m.title for m in all_models()}


def test_sync_skips_a_project_without_a_repository_yet(client, platform):
    title = f"Draft-{uuid.uuid4().hex[:6]}"
    assert f"synced/{title}" in synced(client, [project(title, repo_url="")])["skipped"]


def test_models_sync_pulls_the_web_app_list(platform, tmp_path):
    """`prefect-cs models sync --from URL` reads URL/publish/api/ the same way."""
    import subprocess
    import sys

    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.testing.standin import StandIn

    title = f"Pulled-{uuid.uuid4().hex[:6]}"

    class Projects(StandIn):
        def answer(self, request):
            return (200, [project(title)]) if request.path == "/publish/api/" else (404, {})

    stub = Projects()
    stub.start()
    try:
        cmd = [sys.executable, "-m", "prefect_cs.cli.main", "models", "sync", "--from", stub.url]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=120)
    finally:
        stub.stop()
    assert out.returncode == 0, out.stderr
    assert ModelConfig.for_model("synced", title).memory == "6Gi"


# ---- payloads the real web app accepts (issue 11, Deliver 2) ---------------------------


@pytest.mark.parametrize(
    ("reported", "published", "sent"),
    [
        (None, "0.3.0", "0.3.0"),  # get_version raised at run time: the version publish recorded
        (None, None, "unknown"),  # nothing known: a placeholder, never null (null → 400)
        ("  ", "  ", "unknown"),
        ("1.2.3", None, "unknown"),  # a run's own claim is never sent (issue 18)
        ("9.9", "0.3.0", "0.3.0"),  # what publish recorded wins over what the run said
    ],
)
def test_model_version_is_never_null(reported, published, sent):
    from prefect_cs.flows.payloads import sim_success
    from prefect_cs.runtime.model_process import ModelCall

    call = ModelCall(ok=True, result={}, seconds=1.0, version=reported)
    assert sim_success(str(uuid.uuid4()), call, {}, published)["model_version"] == sent


def test_model_version_is_at_most_50_characters():
    from prefect_cs.flows.payloads import sim_success
    from prefect_cs.runtime.model_process import ModelCall

    call = ModelCall(ok=True, result={})
    sent = sim_success(str(uuid.uuid4()), call, {}, "1.0.0+" + "g" * 80)["model_version"]
    assert len(sent) == 50 and sent.startswith("1.0.0+ggg")


@pytest.mark.parametrize("reason", ["", "   \n", "x" * 20_000], ids=["empty", "blank", "long"])
def test_fail_traceback_is_never_empty_and_at_most_8000(reason):
    from prefect_cs.flows.payloads import sim_fail

    sent = sim_fail(str(uuid.uuid4()), reason)["traceback"]
    assert sent.strip() and len(sent) <= 8000
    if reason.strip():
        assert sent.endswith("x" * 100)  # the end, where the error is, is kept


# ---- the inputs page: C/S asks for defaults twice, and retries a slow one -----------------


def test_the_inputs_pages_second_defaults_request_is_the_first_ones_answer(
    api, paramtools, task_worker
):
    """model_parameters.py asks with {} and then with the specification {} resolved to: one
    cache entry, so the second is answered from memory, not by a second cold model call."""
    from prefect_cs.testing.cs_client import ComputeStudioClient

    cs = ComputeStudioClient(api, TOKEN)
    first = cs.submit_job("tests", "ParamTools", "defaults", {"meta_param_dict": {}})
    assert first["status"] == "SUCCESS"
    resolved = {
        name: [{"value": spec["value"][0]["value"]}]
        for name, spec in first["meta_parameters"].items()
        if name != "schema"  # ParamTools' dump holds its schema beside the parameters
    }
    assert resolved  # {"year": [{"value": 2026}], "use_full_sample": [{"value": True}]}
    started = time.monotonic()
    second = cs.submit_job("tests", "ParamTools", "defaults", {"meta_param_dict": resolved})
    assert second == first  # the same answer, task_times included: no second model call
    assert time.monotonic() - started < 1.0 and cs.attempts_made == [1, 1]


def test_a_slow_defaults_call_is_made_once_and_answered_within_cs_retries(
    api, misbehaving, task_worker
):
    """A 4 s model call outlives C/S's 1.7 s attempts: the retries (and a second page load at
    once) join the call under way instead of starting more, and get its answer."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect_cs.testing.cs_client import ComputeStudioClient

    meta = {"behavior": "slow", "seconds": 4, "page": str(uuid.uuid4())}
    before = parse_task_runs("inputs-defaults")
    clients = [ComputeStudioClient(api, TOKEN) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda cs: cs.submit_job(
                    "tests", "Misbehaving", "defaults", {"meta_param_dict": meta}
                ),
                clients,
            )
        )
    assert [a["status"] for a in answers] == ["SUCCESS", "SUCCESS"]
    calls = {a["meta_parameters"]["call"]["value"] for a in answers}
    assert len(calls) == 1, f"answers of {len(calls)} model calls"
    assert all(1 < cs.attempts_made[0] <= 5 for cs in clients)  # it did outlive an attempt
    assert len(parse_task_runs("inputs-defaults") - before) == 1  # one task for all tries
