"""Every FAIL the web app can receive keeps the web app's rules, whatever message it carries.

The rules (DESIGN, "What the web app receives"; flows/payloads.py): a FAIL traceback is
never empty (C/S 1.6 refuses it) and at most 8,000 characters with its end kept; the body
is strict UTF-8 JSON (a lone surrogate cannot be encoded, so the result would be lost); the
FAIL carries only the keys the web app reads; task_times is one finite number it can bill.
Each builder is checked on its own, then through each sender that builds a FAIL (the
simulate and parse PUTs of the cluster API and the lost-run watcher, delivered to a real
web app stand-in; the version/defaults answers of the inputs tasks and the cluster API).

No Prefect server: the web app block is built in memory; CS_HOME is a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prefect_cs.flows import inputs, notify
from prefect_cs.flows.payloads import (
    TRACEBACK_LIMIT,
    answer_fail,
    parse_fail,
    sendable,
    sim_fail,
)
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.testing.webapp_standin import WebAppStub

HUGE = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "ValueError: the end"
MESSAGES = {
    "empty": "",
    "none": None,
    "blank": "  \n\t",
    "huge": HUGE,
    "surrogate": "ValueError: bad \udc80 byte",
    "huge-surrogate": HUGE.replace("ValueError: the end", "ValueError: \udc80 the end"),
}
PUT_KEYS = {"task_id", "status", "meta", "traceback"}  # what the web app reads on FAIL
ANSWER_KEYS = {"status", "meta", "traceback"}


def web_app_accepts(payload: dict[str, Any], keys: set[str], message: str | None) -> None:
    """The web app's rules on one FAIL, with the message it was built from."""
    assert payload["status"] == "FAIL" and set(payload) == keys, payload.keys()
    json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")  # strict JSON
    traceback = payload["traceback"]
    assert isinstance(traceback, str) and traceback.strip(), "an empty traceback is refused"
    assert len(traceback) <= TRACEBACK_LIMIT, len(traceback)
    if message and "the end" in message:
        assert "the end" in traceback[-200:], "the end, where the error is, is kept"
    if message and "\udc80" in message:
        assert "\ufffd" in traceback and "lone surrogate" in traceback  # replaced, and said so
    (seconds,) = payload["meta"]["task_times"]
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0.0
    assert sendable(payload) == payload, "what a sender makes sendable is what was built"


# ---- each builder ----------------------------------------------------------------------------

BUILDERS = {
    "sim_fail": (lambda message: sim_fail(str(uuid.uuid4()), message), PUT_KEYS),
    "sim_fail-ran": (
        lambda message: sim_fail(str(uuid.uuid4()), message, ModelCall(ok=False, seconds=1.5)),
        PUT_KEYS,
    ),
    "parse_fail": (lambda message: parse_fail(str(uuid.uuid4()), message, 0.25), PUT_KEYS),
    "answer_fail": (answer_fail, ANSWER_KEYS),
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
@pytest.mark.parametrize("builder", BUILDERS, ids=BUILDERS.keys())
def test_each_builders_fail_keeps_the_web_apps_rules(builder, message):
    build, keys = BUILDERS[builder]
    web_app_accepts(build(message), keys, message)


# ---- each sender: PUT to a web app stand-in ---------------------------------------------------


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """A real web app stand-in, and deliveries pointed at it (the block built in memory)."""
    from prefect_cs.blocks.webapp import WebApp

    monkeypatch.setenv("CS_HOME", str(tmp_path / "home"))
    stub = WebAppStub().start()
    monkeypatch.setattr(
        notify, "load_webapp", lambda block=None: WebApp(base_url=stub.url, token=stub.token)
    )
    yield stub
    stub.stop()


def api_sim_failed(task_id: str, message: str | None) -> None:
    from prefect_cs.services.api import sim_failed

    sim_failed({"task_id": task_id}, message)  # type: ignore[arg-type]


def api_parse_failed(task_id: str, message: str | None) -> None:
    from prefect_cs.services.api import parse_failed

    parse_failed({"task_id": task_id}, message)  # type: ignore[arg-type]


class WatcherClient:
    """The few Prefect client calls the lost-run watcher makes for one run."""

    def read_task_runs(self, **_: Any) -> list:
        return []  # the flow never notified

    def read_logs(self, *_: Any, **__: Any) -> list:
        return []

    def update_flow_run(self, *_: Any, **__: Any) -> None:
        return None


def watcher_report(task_id: str, message: str | None, monkeypatch) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect_cs.services import lost_runs

    monkeypatch.setattr(lost_runs, "scrub", lambda run, payload: payload)  # no registry here
    state = SimpleNamespace(type=StateType.CRASHED, name="Crashed", message=message)
    run = SimpleNamespace(id=uuid.uuid4(), parameters={"task_id": task_id}, state=state, tags=[])
    lost_runs.report(WatcherClient(), run, None)  # type: ignore[arg-type]


PUT_SENDERS = {
    "api-sim": (lambda task_id, message, _: api_sim_failed(task_id, message), "/outputs/api/"),
    "api-parse": (lambda task_id, message, _: api_parse_failed(task_id, message), "/inputs/api/"),
    "lost-runs": (watcher_report, "/outputs/api/"),
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
@pytest.mark.parametrize("sender", PUT_SENDERS, ids=PUT_SENDERS.keys())
def test_each_senders_fail_put_keeps_the_web_apps_rules(sender, message, stub, monkeypatch):
    send, path = PUT_SENDERS[sender]
    task_id = str(uuid.uuid4())
    send(task_id, message, monkeypatch)
    web_app_accepts(stub.only_put(task_id, path), PUT_KEYS, message)


# ---- each sender: a version/defaults answer ----------------------------------------------


class FailedFuture:
    """A background task run that ended Failed with `message` (Prefect's may be empty)."""

    def __init__(self, message: str | None) -> None:
        final = SimpleNamespace(is_completed=lambda: False, is_final=lambda: True)
        self.state = SimpleNamespace(**vars(final), message=message)

    def wait(self, timeout: float) -> None:
        return None


def inputs_run(message: str | None, monkeypatch) -> dict[str, Any]:
    monkeypatch.setattr(inputs, "task_storage", contextlib.nullcontext)
    background = SimpleNamespace(delay=lambda *args: FailedFuture(message))
    return inputs._run(background)


def api_light(message: str | None, _) -> dict[str, Any]:
    from prefect_cs.services.api import ClusterApi

    def broken() -> dict[str, Any]:
        raise RuntimeError(message)

    return anyio.run(ClusterApi.light, broken)


ANSWER_SENDERS = {
    "inputs-answer": lambda message, _: inputs.answer(ModelCall(ok=False, error=message)),
    "inputs-failed": lambda message, _: inputs.failed(ValueError(message)),
    "inputs-task-run": inputs_run,
    "api-light": api_light,
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
@pytest.mark.parametrize("sender", ANSWER_SENDERS, ids=ANSWER_SENDERS.keys())
def test_each_senders_fail_answer_keeps_the_web_apps_rules(sender, message, monkeypatch):
    web_app_accepts(ANSWER_SENDERS[sender](message, monkeypatch), ANSWER_KEYS, message)
