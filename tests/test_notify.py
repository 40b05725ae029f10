"""Units of delivery: payloads made sendable, FAIL tracebacks cut and never empty, a result the
web app refuses kept on disk, and `results resend` keeping what fails again.

No Prefect server: the web app block is built in memory and points at a real web app
stand-in (or at a closed port, the web app down); CS_HOME is a temporary folder.
"""

from __future__ import annotations

import json
import uuid

import pytest
from prefect_cs.flows import notify
from prefect_cs.flows.payloads import TRACEBACK_LIMIT, fail_traceback, sendable
from prefect_cs.testing.webapp_standin import WebAppStub

DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A CS_HOME that does not exist yet: keeping a result creates what it needs."""
    monkeypatch.setenv("CS_HOME", str(tmp_path / "new" / "home"))
    return tmp_path / "new" / "home"


@pytest.fixture
def stub():
    stub = WebAppStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def webapp_at(monkeypatch):
    """Point deliveries at a URL (the block, built in memory instead of loaded)."""
    from prefect_cs.blocks.webapp import WebApp

    def point(url: str, token: str = WebAppStub.token) -> None:
        monkeypatch.setattr(
            notify, "load_webapp", lambda block=None: WebApp(base_url=url, token=token)
        )

    return point


def fail(task_id: str, traceback: str = "ValueError: boom") -> dict:
    return {
        "task_id": task_id,
        "status": "FAIL",
        "meta": {"task_times": [0.0]},
        "traceback": traceback,
    }


# ---- tracebacks -----------------------------------------------------------------------------


def test_cut_traceback_keeps_the_end_within_the_web_apps_limit():
    assert TRACEBACK_LIMIT == 8000
    exact = "x" * 7999 + "!"
    assert fail_traceback(exact) == exact
    cut = fail_traceback("a" * 10 + exact)
    assert len(cut) == TRACEBACK_LIMIT and cut == "…" + exact[1:]
    assert fail_traceback("short") == "short"


def test_cut_traceback_is_never_empty():
    for empty in ("", "   \n"):
        assert "no traceback" in fail_traceback(empty)


def test_sendable_fail_is_cut_and_never_empty():
    huge = fail("t", "frame\n" * 5000 + "KeyError: last")
    assert len(sendable(huge)["traceback"]) == TRACEBACK_LIMIT
    assert sendable(huge)["traceback"].endswith("KeyError: last")
    for missing in ({"traceback": ""}, {"traceback": None}, {}):
        payload = {"task_id": "t", "status": "FAIL", "meta": {"task_times": [0.0]}, **missing}
        assert sendable(payload)["traceback"].strip()


def test_sendable_says_what_it_replaced():
    clean = {"task_id": "t", "status": "SUCCESS", "meta": {"task_times": [1.0]}, "outputs": {}}
    assert sendable(clean) == clean
    nan = {**clean, "outputs": {"x": float("nan")}}
    safe = sendable(nan)
    assert safe["outputs"] == {"x": None}
    assert safe["meta"] == {
        "task_times": [1.0],
        "replaced": ["1 NaN/Infinity number(s) by null replaced"],
    }
    no_meta = sendable({"status": "SUCCESS", "x": float("inf")})
    assert no_meta["meta"] == {"replaced": ["1 NaN/Infinity number(s) by null replaced"]}
    failed = sendable(fail("t", "bad \udc80"))
    assert failed["traceback"] == (
        "bad \ufffd\n(replaced before sending (not valid JSON): "
        "1 string(s) with a lone surrogate (by U+FFFD) replaced)"
    )
    assert "replaced" not in failed["meta"]
    json.dumps(failed, allow_nan=False).encode()


# ---- deliver and keep ---------------------------------------------------------------------


def test_deliver_puts_once_with_the_token(home, stub, webapp_at):
    webapp_at(stub.url)
    task_id = str(uuid.uuid4())
    assert notify.deliver(notify.OUTPUTS_PATH, fail(task_id)) == {"delivered": True}
    body = stub.only_put(task_id)
    assert body == fail(task_id)
    assert notify.undelivered() == []


def test_refused_result_is_kept_with_where_it_was_going(home, stub, webapp_at):
    webapp_at(stub.url, token="wrong")
    task_id = str(uuid.uuid4())
    outcome = notify.deliver(notify.INPUTS_PATH, fail(task_id, "x\udc80"))
    assert outcome["delivered"] is False and "401" in outcome["error"]
    (kept,) = notify.undelivered()
    assert str(kept) == outcome["kept"] and kept.parent == home / "undelivered"
    assert kept.name.startswith(f"{task_id}-inputs_api-") and kept.suffix == ".json"
    record = json.loads(kept.read_text())
    assert record["path"] == notify.INPUTS_PATH and "401" in record["error"]
    assert record["payload"] == sendable(fail(task_id, "x\udc80"))  # what was sent is kept


def test_a_task_id_that_is_not_a_uuid_never_names_the_file(home, webapp_at):
    webapp_at(DOWN)
    outcome = notify.deliver(notify.OUTPUTS_PATH, fail("../../x"))
    assert outcome["delivered"] is False
    (kept,) = notify.undelivered()
    assert kept.parent == home / "undelivered" and kept.name.startswith("invalid-task-id-")
    assert json.loads(kept.read_text())["payload"]["task_id"] == "../../x"


# ---- results resend -------------------------------------------------------------------------


def resend_cli():
    from prefect_cs.cli.main import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["results", "resend"])


def test_resend_failing_again_keeps_the_file_says_so_and_exits_non_zero(home, stub, webapp_at):
    webapp_at(DOWN)
    task_id = str(uuid.uuid4())
    notify.deliver(notify.OUTPUTS_PATH, fail(task_id))
    (kept,) = notify.undelivered()

    result = resend_cli()  # the web app is still down
    assert result.exit_code != 0
    assert f"{kept.name}: still undelivered" in result.output
    assert "0 of 1 delivered" in result.output
    assert notify.undelivered() == [kept] and kept.exists()

    webapp_at(stub.url)  # back up
    result = resend_cli()
    assert result.exit_code == 0, result.output
    assert f"{kept.name}: delivered" in result.output and "1 of 1 delivered" in result.output
    assert stub.only_put(task_id)["status"] == "FAIL"
    assert notify.undelivered() == []


def test_resend_delivers_what_it_can_and_keeps_the_rest(home, stub, webapp_at):
    webapp_at(DOWN)
    ok, refused = str(uuid.uuid4()), str(uuid.uuid4())
    notify.deliver(notify.OUTPUTS_PATH, fail(ok))
    notify.deliver(notify.OUTPUTS_PATH, fail(refused, "refuse me"))
    stub.answer = lambda r: (400, {}) if r.body["traceback"] == "refuse me" else (200, {})
    webapp_at(stub.url)
    report = notify.resend_undelivered()
    outcome = {task: o for task in (ok, refused) for p, o in report if task in p.name}
    assert outcome[ok] == "delivered" and outcome[refused].startswith("still undelivered")
    (left,) = notify.undelivered()
    assert refused in left.name
    assert stub.only_put(ok)
