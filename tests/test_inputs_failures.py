"""version, defaults and parse when the model's get_inputs / validate_inputs misbehave: raise,
exit at once, write garbage on the answer channel, or return the wrong shape.

Each must come back as a FAIL (version, defaults) or one FAIL PUT to /inputs/api/ (parse), with
a traceback that says what happened. Real warm model processes run the model code (the
platform's child script); the task functions are called directly, and the web app is a real
stand-in, so no Prefect server is needed.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from prefect_cs.flows import inputs, notify
from prefect_cs.security.scrubber import Scrubber
from prefect_cs.testing.warm_models import warm_model
from prefect_cs.testing.webapp_standin import WebAppStub

GOOD_INPUTS = (
    "def get_inputs(meta):\n    return {'meta_parameters': {}, 'model_parameters': {'s': {}}}\n"
)
GOOD_VERSION = "def get_version():\n    return '1.0'\n"
MISBEHAVIOURS = {
    "raises": ("    raise RuntimeError('{name} exploded')\n", "{name} exploded"),
    "exits at once": ("    import os\n    os._exit(3)\n", "exited"),
    "garbage on the channel": (
        "    import os, sys\n    os.write(int(sys.argv[3]), b'garbage\\n')\n    return {{}}\n",
        "",
    ),
}
HEADS = {"get_version": "def get_version():\n", "get_inputs": "def get_inputs(meta):\n"}
HEADS["validate_inputs"] = "def validate_inputs(meta, adjustment, errors_warnings):\n"


def misbehaving(function: str, how: str) -> tuple[str, str]:
    """(functions.py source where `function` misbehaves `how`, what its traceback must say)."""
    body, said = MISBEHAVIOURS[how]
    source = HEADS[function] + body.format(name=function)
    others = [GOOD_VERSION, GOOD_INPUTS] if function == "validate_inputs" else []
    others += [GOOD_VERSION] if function == "get_inputs" else []
    return "\n".join([*others, source]), said.format(name=function)


@pytest.fixture
def model(tmp_path, monkeypatch):
    """serve(functions) makes the model tests/Light run `functions` in a warm process."""
    started = []
    entry = SimpleNamespace(tag="v1", tier="local", python="python")
    config = SimpleNamespace(
        owner="tests", title="Light", slug="tests-light", time_limit=60, webapp=None
    )
    monkeypatch.setattr(inputs, "_resolve", lambda owner, title, tag: (config, entry))
    monkeypatch.setattr(inputs, "scrubber_for", lambda m: Scrubber([]))

    def serve(functions: str) -> None:
        warm = warm_model(tmp_path / f"m{len(started)}", functions)
        started.append(warm)
        monkeypatch.setattr(
            inputs, "warm_call", lambda m, e, fn, args: warm.call(fn, args, timeout=20)
        )

    yield serve
    for warm in started:
        warm.stop()


@pytest.fixture
def webapp(tmp_path, monkeypatch):
    from prefect_cs.blocks.webapp import WebApp

    stub = WebAppStub().start()
    monkeypatch.setenv("CS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        notify, "load_webapp", lambda block=None: WebApp(base_url=stub.url, token=stub.token)
    )
    yield stub
    stub.stop()


def assert_fail(answer: dict, said: str) -> None:
    assert answer["status"] == "FAIL", answer
    assert answer["traceback"].strip() and said in answer["traceback"], answer["traceback"]
    assert answer["meta"]["task_times"] == [0.0]


@pytest.mark.parametrize("how", list(MISBEHAVIOURS))
def test_version_failure_is_a_fail_answer(model, how):
    functions, said = misbehaving("get_version", how)
    model(functions)
    assert_fail(inputs.version_task.fn("tests", "Light", "v1"), said)


@pytest.mark.parametrize("how", list(MISBEHAVIOURS))
def test_defaults_failure_is_a_fail_answer(model, how):
    functions, said = misbehaving("get_inputs", how)
    model(functions)
    assert_fail(inputs.defaults_task.fn("tests", "Light", {}, "v1"), said)


@pytest.mark.parametrize("function", ["get_inputs", "validate_inputs"])
@pytest.mark.parametrize("how", list(MISBEHAVIOURS))
def test_parse_failure_is_one_fail_put(model, webapp, function, how):
    functions, said = misbehaving(function, how)
    model(functions)
    task_id = str(uuid.uuid4())
    answer = inputs.parse_task.fn("tests", "Light", task_id, {}, {})
    assert_fail(answer, said)
    assert answer["delivery"] == {"delivered": True}
    body = webapp.only_put(task_id, "/inputs/api/")
    assert set(body) == {"task_id", "status", "meta", "traceback"}
    assert_fail(body, said)


@pytest.mark.parametrize(
    ("functions", "said"),
    [
        (GOOD_VERSION + "def get_inputs(meta):\n    return 'a string'\n", "get_inputs"),
        (
            GOOD_VERSION + "def get_inputs(meta):\n    return {'meta_parameters': {}}\n",
            "model_parameters",
        ),
    ],
)
def test_defaults_of_the_wrong_shape_are_a_fail_answer(model, functions, said):
    model(functions)
    assert_fail(inputs.defaults_task.fn("tests", "Light", {}, "v1"), said)


@pytest.mark.parametrize("returned", ["42", "'ok'", "{'errors': {}}", "None"])
def test_parse_of_the_wrong_shape_is_one_fail_put(model, webapp, returned):
    validate = f"def validate_inputs(meta, adjustment, errors_warnings):\n    return {returned}\n"
    model(GOOD_VERSION + GOOD_INPUTS + validate)
    task_id = str(uuid.uuid4())
    answer = inputs.parse_task.fn("tests", "Light", task_id, {}, {})
    assert_fail(answer, "errors_warnings")
    assert_fail(webapp.only_put(task_id, "/inputs/api/"), "errors_warnings")


def test_a_good_parse_is_one_success_put(model, webapp):
    validate = (
        "def validate_inputs(meta, adjustment, errors_warnings):\n"
        "    return {'errors_warnings': errors_warnings}\n"
    )
    model(GOOD_VERSION + GOOD_INPUTS + validate)
    task_id = str(uuid.uuid4())
    assert inputs.parse_task.fn("tests", "Light", task_id, {}, {})["status"] == "SUCCESS"
    body = webapp.only_put(task_id, "/inputs/api/")
    assert body["outputs"] == {"errors_warnings": {"s": {"errors": {}, "warnings": {}}}}
