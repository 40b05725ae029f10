"""No result is ever lost: each fault that used to end with no PUT now ends with exactly one.

Real parts: the simulate flow against the misbehaving sample app's real child
processes, the inputs task worker, the lost-run watcher on a real Prefect
server, and a real web app stand-in counting what reaches it.
"""

from __future__ import annotations

import json
import math
import uuid
import zipfile

import pytest
from prefect_cs.flows import inputs
from prefect_cs.flows.simulate import simulate

FAIL_KEYS = {"task_id", "status", "meta", "traceback"}


def behave(behavior: str) -> dict:
    return {"control": {"behavior": [{"value": behavior}]}}


def run(adjustment: dict, task_id: str | None = None):
    task_id = task_id or str(uuid.uuid4())
    state = simulate("tests", "Misbehaving", task_id, {}, adjustment, return_state=True)
    return task_id, state


def only_put(webapp, task_id: str, path: str = "/outputs/api/") -> dict:
    return webapp.only_put(task_id, path)


def nothing_kept(cs_home, task_id: str) -> bool:
    return not [p for p in (cs_home / "undelivered").glob("*.json") if task_id in p.name]


# ---- simulate ------------------------------------------------------------------------------


def test_long_title_is_delivered_and_zipped(misbehaving, webapp, cs_home):
    task_id, state = run(behave("long_title"))
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    (first, *_) = body["outputs"]["renderable"]["outputs"]
    assert first["title"] == "t" * 70_000  # the description keeps the model's title
    assert len(first["filename"].encode()) <= 200
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        assert first["filename"] in archive.namelist()
    assert nothing_kept(cs_home, task_id)


def test_unsafe_titles_never_become_paths(misbehaving, webapp, cs_home):
    task_id, state = run(behave("unsafe_titles"))
    assert state.is_completed(), state.message
    outputs = only_put(webapp, task_id)["outputs"]["downloadable"]["outputs"]
    titles = [o["title"] for o in outputs]
    assert "../../escape" in titles and "" in titles and "nul\x00byte" in titles
    names = [o["filename"] for o in outputs]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_downloadable.zip") as archive:
        assert sorted(archive.namelist()) == sorted(names)


def test_surrogate_in_exception_is_one_fail(misbehaving, webapp, cs_home):
    task_id, state = run(behave("surrogate_raise"))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert set(body) == FAIL_KEYS and body["status"] == "FAIL"
    assert "cannot decode \ufffd in the input" in body["traceback"]
    assert "lone surrogate" in body["traceback"]
    assert nothing_kept(cs_home, task_id)


def test_nan_in_result_is_replaced_and_said(misbehaving, webapp, cs_home):
    task_id, state = run(behave("nan"))
    assert state.is_completed(), state.message
    body = only_put(webapp, task_id)
    assert body["outputs"]["renderable"]["outputs"][0]["title"] is None
    assert any("NaN" in note for note in body["meta"]["replaced"]), body["meta"]
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_renderable.zip") as archive:
        plot = next(n for n in archive.namelist() if n.startswith("plot"))
        assert json.loads(archive.read(plot)) == {"y": [1.0, None]}


@pytest.fixture
def with_secret(misbehaving):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.security.secrets import get_backend

    get_backend("tests/Misbehaving").set("DEMO_TOKEN", "tok-" + uuid.uuid4().hex)
    model = ModelConfig.for_model("tests", "Misbehaving")
    model.secrets = ["DEMO_TOKEN"]
    model.save_model()
    yield
    model.secrets = []
    model.save_model()
    get_backend("tests/Misbehaving").delete("DEMO_TOKEN")


def test_deep_output_with_a_declared_secret_is_delivered(with_secret, webapp, cs_home):
    task_id, state = run(behave("deep_nested"))
    assert state.is_completed(), state.message
    assert only_put(webapp, task_id)["status"] == "SUCCESS"


def test_output_over_its_cap_is_one_fail_naming_the_setting(misbehaving, webapp, monkeypatch):
    monkeypatch.setenv("CS_LIMITS_OUTPUT_BYTES", "1000000")
    task_id, state = run(behave("big_output"))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert body["status"] == "FAIL" and "CS_LIMITS_OUTPUT_BYTES" in body["traceback"]


def test_result_over_its_cap_is_one_fail_naming_the_setting(misbehaving, webapp, monkeypatch):
    monkeypatch.setenv("CS_LIMITS_RESULT_BYTES", "2000000")
    task_id, state = run(behave("big_output"))
    assert state.is_failed()
    assert "CS_LIMITS_RESULT_BYTES" in only_put(webapp, task_id)["traceback"]


def test_stdout_flood_keeps_only_the_capped_tail(misbehaving, webapp, monkeypatch):
    from prefect_cs.runtime.model_process import call_model

    monkeypatch.setenv("CS_LIMITS_STDOUT_TAIL_BYTES", "3000")
    task_id, state = run(behave("flood_stdout"))
    assert state.is_completed(), state.message
    assert only_put(webapp, task_id)["status"] == "SUCCESS"
    entry = inputs.ModelConfig.for_model("tests", "Misbehaving").published()
    call = call_model(entry.python, "run_model", [{}, behave("flood_stdout")], timeout=30)
    assert call.ok and 0 < len(call.output.encode()) <= 3000


def test_platform_fault_after_start_is_one_fail(misbehaving, webapp, monkeypatch):
    """Whatever breaks inside the flow (here: storing the zips) still ends in one FAIL."""
    from prefect_cs.flows import simulate as module

    def broken(zips):
        raise OSError("disk on fire")

    monkeypatch.setattr(module, "store_zips", broken)
    task_id, state = run(behave("ok"))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert body["status"] == "FAIL" and "disk on fire" in body["traceback"]


def test_a_platform_hiccup_is_retried_not_blamed_on_the_model(misbehaving, webapp, monkeypatch):
    """Storage drops the connection twice, then works: Prefect's task retries absorb it."""
    from prefect_cs.flows import simulate as module

    real, calls = module.store_zips, []

    def flaky(zips):
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("storage reset the connection")
        return real(zips)

    monkeypatch.setattr(module, "store_zips", flaky)
    task_id, state = run(behave("ok"))
    assert state.is_completed(), state.message
    assert len(calls) == 3 and only_put(webapp, task_id)["status"] == "SUCCESS"


def test_a_platform_error_that_persists_is_one_fail_that_says_whose_it_is(
    misbehaving, webapp, monkeypatch
):
    from prefect_cs.flows import simulate as module

    calls = []

    def down(zips):
        calls.append(1)
        raise ConnectionResetError("storage is down")

    monkeypatch.setattr(module, "store_zips", down)
    task_id, state = run(behave("ok"))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert body["status"] == "FAIL"
    assert body["traceback"].startswith("platform error, not your model")
    assert "storage is down" in body["traceback"]
    assert len(calls) == 1 + module.PLATFORM_RETRIES["retries"]


# ---- the watcher: Failed and Cancelled runs that never notified ---------------------------


def _lost_run(final) -> tuple[str, object]:
    """A simulate run that ended without its notify step, as a killed or cancelled job leaves it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running
    from prefect_cs.services.lost_runs import SIMULATE_TAG

    task_id = str(uuid.uuid4())
    params = {"owner": "tests", "title": "Misbehaving", "task_id": task_id}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(simulate, parameters=params, tags=[SIMULATE_TAG])
        client.set_flow_run_state(run.id, Running(), force=True)
        client.set_flow_run_state(run.id, final(message="stopped by the operator"), force=True)
    return task_id, run


@pytest.mark.parametrize("kind", ["Cancelled", "Failed"])
def test_watcher_reports_a_run_that_never_notified_once(misbehaving, webapp, kind):
    from prefect import states
    from prefect_cs.services.lost_runs import scan_once

    task_id, run = _lost_run(getattr(states, kind))
    reports = scan_once(pending_timeout=3600, only=[run.id])
    assert [r["task_id"] for r in reports] == [task_id]
    body = only_put(webapp, task_id)
    assert body["status"] == "FAIL" and f"({kind}: stopped by the operator)" in body["traceback"]
    assert scan_once(pending_timeout=3600, only=[run.id]) == []
    assert len(webapp.accepted("/outputs/api/")) == 1


def test_watcher_leaves_a_failed_run_that_notified_itself(misbehaving, webapp):
    from prefect import tags
    from prefect_cs.services.lost_runs import REPORTED_TAG, SIMULATE_TAG, scan_once

    with tags(SIMULATE_TAG):
        task_id, state = run(behave("raise"))
    assert state.is_failed()
    reports = scan_once(pending_timeout=3600, only=[state.state_details.flow_run_id])
    assert reports and reports[0].get("status") is None  # only tagged: already_notified
    assert scan_once(pending_timeout=3600, only=[state.state_details.flow_run_id]) == []
    assert only_put(webapp, task_id)["status"] == "FAIL"  # the flow's own, after two scans
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert REPORTED_TAG in client.read_flow_run(state.state_details.flow_run_id).tags


# ---- inputs: parse / defaults / version ----------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "status", "said"),
    [
        ("parse_nan", "SUCCESS", "NaN"),
        ("parse_surrogate", "SUCCESS", "lone surrogate"),
        ("parse_raise", "FAIL", "exploded on purpose"),
    ],
)
def test_parse_always_puts_once(misbehaving, task_worker, webapp, behavior, status, said):
    task_id = str(uuid.uuid4())
    answer = inputs.parse("tests", "Misbehaving", task_id, {}, behave(behavior))
    assert answer["status"] == status
    body = only_put(webapp, task_id, "/inputs/api/")
    assert body["status"] == status
    assert said in json.dumps(body), body


def test_defaults_with_nan_are_answered_json_safe(misbehaving, task_worker):
    answer = inputs.get_defaults("tests", "Misbehaving", {"behavior": "nan"})
    assert answer["status"] == "SUCCESS"
    assert answer["meta_parameters"]["score"]["value"] is None
    json.dumps(answer, allow_nan=False).encode()
    assert not any(isinstance(v, float) and math.isnan(v) for v in answer["meta"]["task_times"])


def test_defaults_failure_is_a_fail_answer(misbehaving, task_worker):
    answer = inputs.get_defaults("tests", "Misbehaving", {"behavior": "raise"})
    assert answer["status"] == "FAIL" and "exploded on purpose" in answer["traceback"]
    json.dumps(answer, allow_nan=False).encode()


def test_light_answer_over_its_cap_is_a_fail_naming_the_setting(misbehaving, task_worker):
    size = 40 * 1024 * 1024  # the worker runs with CS_LIMITS_LIGHT_ANSWER_BYTES at its default
    answer = inputs.get_defaults("tests", "Misbehaving", {"behavior": "huge", "size": size})
    assert answer["status"] == "FAIL"
    assert "CS_LIMITS_LIGHT_ANSWER_BYTES" in answer["traceback"]


def test_unknown_tag_in_parse_is_a_fail_put(misbehaving, task_worker, webapp):
    task_id = str(uuid.uuid4())
    answer = inputs._run(inputs.parse_task, "tests", "Misbehaving", task_id, {}, {}, "v999")
    assert answer["status"] == "FAIL"
    assert "v999" in only_put(webapp, task_id, "/inputs/api/")["traceback"]


# ---- what the model answers, delivered as exactly one FAIL ---------------------------------


@pytest.fixture
def model_answers(misbehaving, monkeypatch):
    """The model's run answers `call` (set it): the flow's checks of an answer, without a child."""
    from prefect_cs.flows import simulate as module
    from prefect_cs.runtime.model_process import ModelCall

    answer = {"call": ModelCall(ok=True)}
    monkeypatch.setattr(module, "run_model_task", lambda *args, **kwargs: answer["call"])
    return answer


def test_invalid_base64_is_one_fail_naming_the_output(model_answers, webapp, cs_home):
    from prefect_cs.runtime.model_process import ModelCall

    chart = {"media_type": "PNG", "title": "chart", "data": "not base64!"}
    result = {"renderable": [chart], "downloadable": []}
    model_answers["call"] = ModelCall(ok=True, result=result, seconds=0.1, version="1")
    task_id, state = run(behave("ok"))
    assert state.is_failed()
    body = only_put(webapp, task_id)
    assert set(body) == FAIL_KEYS and body["status"] == "FAIL"
    assert "renderable[0] ('chart') is PNG but not valid base64" in body["traceback"]
    assert not list((cs_home / "outputs").glob(f"{task_id}_*"))
    assert nothing_kept(cs_home, task_id)


def test_huge_traceback_is_cut_keeping_its_end(model_answers, webapp):
    from prefect_cs.runtime.model_process import ModelCall

    error = "Traceback (most recent call last):\n" + "  frame\n" * 20_000 + "ValueError: the end"
    model_answers["call"] = ModelCall(ok=False, error=error, seconds=0.1)
    task_id, state = run(behave("ok"))
    assert state.is_failed()
    traceback = only_put(webapp, task_id)["traceback"]
    assert len(traceback) == 8000 and traceback.endswith("ValueError: the end")


@pytest.mark.parametrize("error", ["", None])
def test_fail_traceback_is_never_empty(model_answers, webapp, error):
    from prefect_cs.runtime.model_process import ModelCall

    model_answers["call"] = ModelCall(ok=False, error=error)
    task_id, state = run(behave("ok"))
    assert state.is_failed()
    assert only_put(webapp, task_id)["traceback"].strip()
