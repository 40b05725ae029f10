"""Compute Studio 1.6 as it calls the cluster, every call of a user's session, in order.

The web app's side is its compute.py's behaviour (testing/cs_client.py: requests, 1.7 s per
attempt, five attempts, no Authorization header, each caller reading the answer its own way)
and its recorder of PUTs, which accepts only what C/S's serializers accept. The cluster's side
is what `stack start` runs for such a web app: the cluster API with CS_API_AUTH=none on
loopback, the inputs task worker, a process worker, the published sample apps. The session:

1. a project page asks the version (SyncCompute);
2. the inputs page asks the defaults twice, `{}` then the resolved meta parameters
   (webapp/apps/comp/model_parameters.py), each within C/S's five tries;
3. the user's adjustment is parsed (Compute) with the web app's own `errors_warnings`
   ("GUI"/"API" sections), and the result is PUT to /inputs/api/: C/S's own API error makes the
   inputs INVALID, a clean adjustment makes them SUCCESS;
4. the simulation is submitted (Compute, with the project's latest tag) and its result PUT to
   /outputs/api/ once;
5. the owner edits the project: /sync/ (SyncProjects) answers as C/S reads it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prefect_cs.services.stack_parts import process_worker
from prefect_cs.testing.api_process import serving_api
from prefect_cs.testing.cs_client import ComputeStudioClient
from prefect_cs.testing.scratch import free_port

BEHAVE_OK = {"control": {"behavior": [{"value": "ok"}]}}


def serving_without_auth(port: int):
    """The stack's cluster API process as `stack start` runs it with CS_API_AUTH=none."""
    return serving_api("cluster-api-cs16", port, env={"CS_API_AUTH": "none"})


@pytest.fixture(scope="module")
def cluster(platform, misbehaving, paramtools, task_worker) -> Iterator[str]:
    worker = process_worker()
    worker.start()
    try:
        with serving_without_auth(free_port()) as url:
            yield url
    finally:
        worker.stop()


def c_s_errors_warnings(sections: list[str], api_errors: dict | None = None) -> dict:
    """What C/S's APIParser sends: one entry per model section plus its own GUI and API."""
    found = {sect: {"errors": {}, "warnings": {}} for sect in [*sections, "GUI", "API"]}
    if api_errors:
        found["API"]["errors"] = api_errors
    return found


def is_valid(errors_warnings: dict) -> bool:
    """C/S marks parsed inputs INVALID when any section reports an error."""
    return not any(section["errors"] for section in errors_warnings.values())


def test_a_users_session_as_compute_studio_16_makes_it(cluster, webapp):
    cs = ComputeStudioClient(cluster)  # no token: C/S 1.6 sends none

    success, version = cs.submit_sync("tests", "ParamTools", "version", {})
    assert success and version["version"], version

    started = time.perf_counter()
    success, first = cs.submit_sync("tests", "ParamTools", "defaults", {"meta_param_dict": {}})
    assert success, first
    # meta_param_parser.specification(meta_data=False, serializable=True): each value list
    resolved = {k: v["value"] for k, v in first["meta_parameters"].items() if k != "schema"}
    assert resolved, "the sample app has meta parameters: the second call must differ"
    success, second = cs.submit_sync(
        "tests", "ParamTools", "defaults", {"meta_param_dict": resolved}
    )
    assert success and second["model_parameters"] == first["model_parameters"]
    page = time.perf_counter() - started
    print(f"inputs page, both defaults calls: {page:.2f} s")

    sections = list(first["model_parameters"])
    section = sections[0]
    param = next(p for p in first["model_parameters"][section] if p != "schema")  # a dump's
    default = first["model_parameters"][section][param]["value"][0]["value"]  # valid
    parse_kwargs = {
        "meta_param_dict": resolved,
        "adjustment": {section: {param: [{"value": default}]}},
        "errors_warnings": c_s_errors_warnings(
            sections, {"extra_keys": ["Has extra sections: nosuch"]}
        ),
    }
    invalid_id = cs.submit_async("tests", "ParamTools", "parse", parse_kwargs)
    parse_kwargs["errors_warnings"] = c_s_errors_warnings(sections)
    valid_id = cs.submit_async("tests", "ParamTools", "parse", parse_kwargs)
    for job_id in (invalid_id, valid_id):
        uuid.UUID(job_id)  # C/S stores it as the inputs' job_id
        webapp.first_about(job_id, timeout=120)
    invalid = webapp.only_put(invalid_id, "/inputs/api/")
    valid = webapp.only_put(valid_id, "/inputs/api/")
    assert invalid["status"] == valid["status"] == "SUCCESS", (invalid, valid)
    assert not is_valid(invalid["outputs"]["errors_warnings"])  # C/S: INVALID, as its cluster
    assert is_valid(valid["outputs"]["errors_warnings"]), valid  # C/S: SUCCESS, then the sim

    sim_kwargs = {"meta_param_dict": {}, "adjustment": BEHAVE_OK}
    sim_id = cs.submit_async("tests", "Misbehaving", "sim", sim_kwargs, tag="v1")
    webapp.first_about(sim_id, timeout=300)
    body = webapp.only_put(sim_id)
    assert body["status"] == "SUCCESS" and body["model_version"], body
    assert set(body["outputs"]) == {"renderable", "downloadable"}

    project = {
        "owner": "synced",
        "title": f"Cs16-{uuid.uuid4().hex[:6]}",
        "repo_url": "https://github.com/PSLmodels/Tax-Cruncher",
        "repo_tag": "v1",
        "latest_tag": "v1",
        "exp_task_time": 12,
        "cpu": 2,
        "memory": 6,
        "status": "live",
    }
    assert cs.sync_projects([project]) is None  # `if not response.text: return`
    deadline = time.monotonic() + 120
    while (last := httpx.get(f"{cluster}/sync/last").json())["pending"]:
        assert time.monotonic() < deadline, last
        time.sleep(0.2)
    assert last["last"]["status"] == "applied", last
    assert max(cs.attempts_made) <= 5, cs.attempts_made
