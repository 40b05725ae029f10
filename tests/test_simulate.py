"""The simulate flow on the embedded tier, against real child processes and a real web app
stand-in."""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path

import pytest
from prefect_cs.flows.simulate import simulate
from prefect_cs.testing.model_code import model_python, script_runner
from prefect_cs.testing.models import sample_app_constant

SUCCESS_KEYS = {"task_id", "status", "model_version", "meta", "outputs", "version"}
FAIL_KEYS = {"task_id", "status", "meta", "traceback"}


def behave(behavior: str) -> dict:
    return {"control": {"behavior": [{"value": behavior}]}}


def run(owner: str, title: str, adjustment: dict, tag: str | None = None):
    task_id = str(uuid.uuid4())
    state = simulate(owner, title, task_id, {}, adjustment, tag, return_state=True)
    return task_id, state


def only_put(webapp, task_id: str) -> dict:
    return webapp.only_put(task_id)  # sent once and accepted: the stand-in checked the token


def test_success_payload_and_zips(misbehaving, webapp, cs_home):
    task_id, state = run("tests", "Misbehaving", behave("ok"))
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    assert set(body) == SUCCESS_KEYS
    assert body["status"] == "SUCCESS" and body["version"] == "v1" and body["task_id"] == task_id
    assert body["model_version"]
    assert len(body["meta"]["task_times"]) == 1 and 0 <= body["meta"]["task_times"][0] < 5
    for category in ("renderable", "downloadable"):
        info = body["outputs"][category]
        assert info["ziplocation"] == f"{task_id}_{category}.zip"
        assert info["outputs"], category
        with zipfile.ZipFile(cs_home / "outputs" / info["ziplocation"]) as archive:
            assert sorted(archive.namelist()) == sorted(o["filename"] for o in info["outputs"])
        for output in info["outputs"]:
            assert set(output) == {"id", "title", "media_type", "filename"}
            uuid.UUID(output["id"])


@pytest.mark.parametrize(
    ("behavior", "reason"),
    [
        ("raise", "model exploded on purpose"),
        ("hang", "time limit of 8 seconds"),
        ("segfault", "segmentation fault"),
        ("exit", "exited with code 3"),
        ("oom", "memory"),
        ("bad_media_type", "media_type 'GIF'"),
        ("missing_key", "has no 'data'"),
        ("not_serializable", "not JSON-serializable"),
        ("csv_bytes", "is 'CSV' with bytes data"),  # cs-storage refuses it too
    ],
)
def test_failure_is_reported(misbehaving, webapp, behavior, reason):
    task_id, state = run("tests", "Misbehaving", behave(behavior))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert set(body) == FAIL_KEYS
    assert body["status"] == "FAIL"
    assert reason in body["traceback"], body["traceback"]
    assert len(body["traceback"]) <= 8000
    # the model ran, so its FAIL is billed for it (the web app sums task_times), measured
    assert body["meta"]["task_times"][0] > 0 and body["meta"]["cpu_seconds"] > 0, body["meta"]
    if behavior == "hang":
        assert body["meta"]["task_times"][0] >= 8


def zipped(cs_home, body: dict, category: str) -> dict[str, bytes]:
    """title -> the member's bytes, read through the description the web app got."""
    info = body["outputs"][category]
    with zipfile.ZipFile(cs_home / "outputs" / info["ziplocation"]) as archive:
        return {o["title"]: archive.read(o["filename"]) for o in info["outputs"]}


def test_bytes_outputs_as_compute_studio_accepted_them(misbehaving, webapp, cs_home):
    """A PDF as raw bytes and a PNG as base64 text with line breaks (what cs-kit's tests and
    cs_storage.serialize_to_json accept): SUCCESS, and the zips hold the very bytes."""
    task_id, state = run("tests", "Misbehaving", behave("pdf_bytes"))
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    assert body["status"] == "SUCCESS"
    assert zipped(cs_home, body, "downloadable")["report"] == sample_app_constant("PDF_BYTES")
    assert zipped(cs_home, body, "renderable")["chart"] == sample_app_constant("PNG_BYTES")
    assert body["outputs"]["downloadable"]["outputs"][-1]["filename"] == "report.pdf"


def test_empty_titles_are_delivered(misbehaving, webapp, cs_home):
    task_id, state = run("tests", "Misbehaving", behave("empty_title"))
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    assert body["status"] == "SUCCESS"
    renderable = body["outputs"]["renderable"]["outputs"]
    assert [o["title"] for o in renderable] == ["Summary", ""]
    assert renderable[1]["filename"] == "output-2.pdf"
    assert zipped(cs_home, body, "renderable")[""] == sample_app_constant("PDF_BYTES")
    assert [o["title"] for o in body["outputs"]["downloadable"]["outputs"]] == [""]


def test_model_prints_do_not_confuse_the_result(misbehaving, webapp):
    task_id, state = run("tests", "Misbehaving", behave("print_noise"))
    assert state.is_completed(), state.message
    assert only_put(webapp, task_id)["status"] == "SUCCESS"


def test_unknown_model_and_tag_are_reported(misbehaving, webapp):
    task_id, state = run("tests", "Misbehaving", behave("ok"), tag="v999")
    assert state.is_failed()
    assert "no published tag 'v999'" in only_put(webapp, task_id)["traceback"]
    task_id, state = run("tests", "Nobody", {})
    assert "not registered" in only_put(webapp, task_id)["traceback"]


def test_webapp_retries_then_accepts(misbehaving, webapp):
    webapp.fail_next = 2
    task_id, state = run("tests", "Misbehaving", behave("ok"))
    assert state.is_completed(), state.message
    attempts = [r for r in webapp.requests if r.body.get("task_id") == task_id]
    assert len(attempts) == 3


def test_webapp_down_keeps_result_and_resend_delivers_it(misbehaving, webapp, cs_home):
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.cli.main import app
    from typer.testing import CliRunner

    WebApp(base_url="http://127.0.0.1:9", token=webapp.token).save("default", overwrite=True)
    task_id, state = run("tests", "Misbehaving", behave("raise"))
    assert state.is_failed()
    kept = [p for p in (cs_home / "undelivered").glob("*.json") if task_id in p.name]
    assert len(kept) == 1
    assert json.loads(kept[0].read_text())["payload"]["status"] == "FAIL"

    WebApp(base_url=webapp.url, token=webapp.token).save("default", overwrite=True)
    result = CliRunner().invoke(app, ["results", "resend"])
    assert result.exit_code == 0, result.output
    assert only_put(webapp, task_id)["status"] == "FAIL"
    assert not kept[0].exists()


def test_child_gets_no_platform_credentials(tmp_path, monkeypatch):
    """The model's process sees none of the platform's environment, only what it is given."""
    from prefect_cs.runtime.model_process import call_model

    monkeypatch.setenv("PREFECT_API_KEY", "pnu_platform_key")
    monkeypatch.setenv("CS_WEBAPP_TOKEN", "webapp-token-value")
    runner = script_runner(
        "import json, os, sys\n"
        "json.dump({'ok': True, 'result': dict(os.environ), 'seconds': 0},"
        " open(sys.argv[2], 'w'))\n"
    )
    call = call_model(
        model_python(), "run_model", [], timeout=30, env={"MODEL_SECRET": "x"}, runner=runner
    )
    assert call.ok
    assert call.result["MODEL_SECRET"] == "x"
    leaked = [k for k in call.result if k.startswith(("PREFECT_", "CS_"))]
    assert leaked == []
    assert "pnu_platform_key" not in json.dumps(call.result)
    assert os.environ["PREFECT_API_KEY"] == "pnu_platform_key"


def test_paramtools_app_real_outputs(paramtools, webapp, cs_home):
    adjustment = json.loads(
        (Path(__file__).parents[1] / "examples/paramtools-app/adjustment.json").read_text()
    )
    task_id, state = run("tests", "ParamTools", adjustment)
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    media = {
        o["media_type"]
        for c in ("renderable", "downloadable")
        for o in body["outputs"][c]["outputs"]
    }
    assert {"table", "CSV", "PNG"} <= media
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        png = next(n for n in archive.namelist() if n.endswith(".png"))
        assert archive.read(png).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_quick_run_with_only_the_deployment_defaults_completes_and_notifies(misbehaving, webapp):
    """The Prefect UI's Quick run sends only the deployment's parameters (owner, title): the
    run makes its own task_id, completes, and the web app gets one PUT under it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("simulate/tests-misbehaving")
    assert "task_id" not in deployment.parameter_openapi_schema.get("required", [])
    before = {r.body.get("task_id") for r in webapp.received("/outputs/api/")}
    state = simulate(**deployment.parameters, return_state=True)
    assert state.is_completed(), state.message
    puts = [r for r in webapp.accepted("/outputs/api/") if r.body.get("task_id") not in before]
    assert len(puts) == 1 and puts[0].body["status"] == "SUCCESS"
    uuid.UUID(puts[0].body["task_id"])


@pytest.mark.parametrize(
    ("behavior", "refusals", "status", "delivered"),
    [("ok", 0, "SUCCESS", True), ("raise", 3, "FAIL", False)],  # 3: every attempt answered 503
    ids=["success-delivered", "fail-kept"],
)
def test_the_api_reads_a_runs_outcome_as_data_not_from_its_message(
    misbehaving, webapp, behavior, refusals, status, delivered
):
    """Issue 20: GET …/runs/{id} read status and delivered out of the state message; the run now
    records them in its outputs artifact's metadata, so rewording the message changes nothing."""
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.states import Completed
    from prefect_cs.flows.outcome import outputs_key
    from prefect_cs.services.api import run_status

    webapp.fail_next = refusals
    task_id, state = run("tests", "Misbehaving", behave(behavior))
    run_id = state.state_details.flow_run_id
    artifact = Artifact.get(outputs_key(task_id), _sync=True)
    assert artifact.flow_run_id == run_id
    assert artifact.metadata_ == {
        "task_id": task_id,
        "status": status,
        "delivered": str(delivered).lower(),
    }
    with get_client(sync_client=True) as client:
        client.update_flow_run(run_id, tags=[f"task:{task_id}"])  # as create_simulation_run does
        client.set_flow_run_state(run_id, Completed(message="reworded for people"), force=True)
    seen = run_status("tests", "Misbehaving", task_id)
    assert (seen["status"], seen["delivered"]) == (status, delivered), seen
    assert seen["message"] == "reworded for people"
