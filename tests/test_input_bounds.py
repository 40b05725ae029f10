"""Bounds on what callers and models hand the platform (issue 18): nesting, output count, version.

A body or adjustment nested deep enough broke the platform's own recursive JSON
handling and was reported as the platform's fault; 20,000 tiny outputs held a worker
for 336 s; a model's own answer file chose the `model_version` the web app stored.
Units first (no server), then the simulate and parse flows against the misbehaving
sample app's real children, with the web app stand-in counting what reaches it. The
cluster API's 400s are in tests/test_api.py.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import pytest
from prefect_cs.core import json_depth
from prefect_cs.core.errors import MalformedOutputs, TooDeep
from prefect_cs.flows import inputs
from prefect_cs.flows.simulate import simulate

LIMIT = 100  # CS_LIMITS_JSON_DEPTH's default, which the tests run with


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = {"x": value} if level % 2 else [value]
    return value


def behave(behavior: str, **extra: Any) -> dict:
    return {"control": {"behavior": [{"value": behavior}]}, **extra}


# ---- measuring depth without recursion -------------------------------------------------


def random_json(rng: random.Random, depth: int) -> Any:
    if depth == 0 or rng.random() < 0.2:
        return rng.choice([1, 2.5, None, True, "s", 'a"[{b', "\\", "]}\\\\", '\\"[', "ü[\u2028"])
    if rng.random() < 0.5:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}[": random_json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_text_depth_agrees_with_the_parsed_value_and_ignores_brackets_in_strings():
    rng = random.Random(18)
    for _ in range(500):
        value = random_json(rng, rng.randint(0, 12))
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
            assert json_depth.text_depth(text) == json_depth.value_depth(value), text


@pytest.mark.parametrize(
    "body",
    [
        "[" * 4_000_000,
        "[1," * 1_300_000,
        '"' + "\\\\" * 2_000_000,  # one string of escapes, never closed
        '"\\' * 2_000_000,  # every quote escaped: one string to the end
        '\\"' * 2_000_000,  # a quote after every backslash, outside a string
        '"' * 4_000_001,
    ],
    ids=["brackets", "arrays", "escapes", "escaped-quotes", "stray-quotes", "quotes"],
)
def test_text_depth_is_linear_on_hostile_bodies(body):
    """4 MB bodies (the API's cap) built to make a scanner backtrack or re-scan."""
    started = time.perf_counter()
    json_depth.text_depth(body)
    assert time.perf_counter() - started < 5, "a body the API's cap allows took too long"


def test_loads_refuses_past_the_limit_naming_it_and_parses_up_to_it():
    with pytest.raises(TooDeep, match=r"nested 100,000 levels deep, over the limit of 100 \("):
        json_depth.loads(b"[" * 100_000 + b"]" * 100_000, LIMIT)
    assert json_depth.loads(json.dumps(nested(LIMIT)).encode("utf-16"), LIMIT) == nested(LIMIT)
    with pytest.raises(ValueError, match="Expecting"):
        json_depth.loads(b"[1,", LIMIT)


def test_the_webhook_receiver_parses_a_deep_body_as_a_refusal_not_a_crash():
    """It parses before the signature check (to find the repository's key): anyone could send it."""
    from prefect_cs.services.webhook.app import parse_payload

    payload, why = parse_payload(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert payload is None and "CS_LIMITS_JSON_DEPTH" in (why or "")
    assert parse_payload(b'{"ref": "refs/tags/v1"}') == ({"ref": "refs/tags/v1"}, None)


def test_inputs_are_checked_by_name():
    json_depth.check_inputs({}, nested(LIMIT), LIMIT)
    with pytest.raises(TooDeep, match="^your adjustment is nested 101 levels deep"):
        json_depth.check_inputs({}, nested(LIMIT + 1), LIMIT)
    with pytest.raises(TooDeep, match=r"^your meta parameters \(meta_param_dict\) is nested"):
        json_depth.check_inputs(nested(LIMIT + 1), {}, LIMIT)


# ---- a too-deep adjustment is the user's FAIL -------------------------------------------


def test_a_too_deep_adjustment_started_through_prefect_is_one_fail_naming_it(misbehaving, webapp):
    """A run started through Prefect directly (not the API, which answers 400): the flow says
    whose input it was, before the model runs, instead of a platform error."""
    task_id = str(uuid.uuid4())
    adjustment = behave("ok", extra=nested(150))  # Prefect stores parameters up to 255 levels
    state = simulate("tests", "Misbehaving", task_id, {}, adjustment, return_state=True)
    assert state.is_failed(), state.message
    body = webapp.only_put(task_id)
    assert body["status"] == "FAIL"
    assert "your adjustment is nested 151 levels deep, over the limit of 100" in body["traceback"]
    assert "CS_LIMITS_JSON_DEPTH" in body["traceback"]
    assert "platform error" not in body["traceback"]
    assert body["meta"]["task_times"] == [0.0]  # the model never ran: nothing billed


def test_a_too_deep_adjustment_to_parse_is_one_fail_naming_it(misbehaving, task_worker, webapp):
    task_id = str(uuid.uuid4())
    answer = inputs.parse("tests", "Misbehaving", task_id, {}, behave("ok", extra=nested(150)))
    assert answer["status"] == "FAIL"
    body = webapp.only_put(task_id, "/inputs/api/")
    assert body["status"] == "FAIL" and "your adjustment is nested 151 levels" in body["traceback"]


# ---- outputs: counted first, every check linear -----------------------------------------


def outputs(count: int, title: str = "n") -> dict[str, list[dict[str, Any]]]:
    tiny = [{"media_type": "Text", "title": title, "data": "1"} for _ in range(count)]
    return {"renderable": tiny[:1], "downloadable": tiny[1:]}


def test_more_outputs_than_the_cap_is_refused_naming_the_figure_and_the_setting():
    from prefect_cs.flows.outputs import validate_outputs

    assert len(validate_outputs(outputs(1000))["downloadable"]) == 999
    with pytest.raises(MalformedOutputs) as refused:
        validate_outputs(outputs(1001))
    text = str(refused.value)
    assert "run_model returned 1,001 outputs (1 renderable, 1,000 downloadable)" in text
    assert "over the cap of 1,000 outputs per result" in text and "CS_LIMITS_OUTPUT_COUNT" in text


def test_output_checks_read_the_settings_once_per_result(monkeypatch):
    """The settings tree was rebuilt per output: 20,000 outputs cost minutes before the model's
    answer was even looked at."""
    from prefect_cs.flows import outputs as module

    reads = []
    real = module.get_settings
    monkeypatch.setattr(module, "get_settings", lambda: reads.append(1) or real())
    module.validate_outputs(outputs(1000))
    assert len(reads) == 1


def test_duplicate_titles_are_numbered_in_linear_time():
    from prefect_cs.flows.outputs import member_names

    started = time.perf_counter()
    names = member_names(outputs(20_000)["downloadable"])
    assert time.perf_counter() - started < 5  # 63 s before (every copy tried 2, 3, … again)
    assert names[:3] == ["n.txt", "n (2).txt", "n (3).txt"] and names[-1] == "n (19999).txt"
    assert len(set(names)) == len(names)


def test_twenty_thousand_tiny_outputs_are_one_fail_that_comes_back_fast(misbehaving, webapp):
    task_id = str(uuid.uuid4())
    started = time.perf_counter()
    state = simulate("tests", "Misbehaving", task_id, {}, behave("many_outputs"), return_state=True)
    elapsed = time.perf_counter() - started
    assert state.is_failed(), state.message
    body = webapp.only_put(task_id)
    assert body["status"] == "FAIL"
    assert "run_model returned 20,002 outputs" in body["traceback"]
    assert "over the cap of 1,000 outputs per result" in body["traceback"]
    assert "CS_LIMITS_OUTPUT_COUNT" in body["traceback"]
    print(f"20,002 outputs: FAIL delivered in {elapsed:.1f} s (flow, model child included)")
    assert elapsed < 60, f"{elapsed:.1f} s: a worker held by a model's output count"


# ---- model_version: the platform's own record, not the run's claim ----------------------


def test_a_model_written_answer_file_does_not_choose_the_model_version(misbehaving, webapp):
    """The run's answer file says 9.9; get_version said 0.3.0 when publish asked it."""
    from prefect_cs.blocks.model_config import ModelConfig

    assert ModelConfig.for_model("tests", "Misbehaving").published("v1").version == "0.3.0"
    task_id = str(uuid.uuid4())
    state = simulate(
        "tests", "Misbehaving", task_id, {}, behave("forge_version"), return_state=True
    )
    assert state.is_completed(), state.message
    body = webapp.only_put(task_id)
    assert body["status"] == "SUCCESS" and body["model_version"] == "0.3.0"
