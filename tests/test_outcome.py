"""A simulate run's outcome, read by the cluster API: from the data the run recorded, and from
the old state message only for runs that recorded none (flows/outcome.py).

Units without a Prefect server; tests/test_simulate.py checks a real run writes the data and
that `run_status` reads it when the message is reworded.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from prefect_cs.flows.outcome import (
    Outcome,
    legacy_outcome,
    outcome_metadata,
    outputs_key,
    read_outcome,
)

RUN = uuid.uuid4()


def artifact(metadata: dict[str, str] | None, run_id: uuid.UUID = RUN) -> SimpleNamespace:
    return SimpleNamespace(flow_run_id=run_id, metadata_=metadata)


@pytest.mark.parametrize(
    ("status", "delivered"), [("SUCCESS", True), ("SUCCESS", False), ("FAIL", True)]
)
def test_the_recorded_outcome_wins_over_any_message(status, delivered):
    recorded = artifact(outcome_metadata(str(RUN), status, delivered))
    for message in (
        "",
        "reworded",
        "FAIL in 1s; web app NOT notified",
        "SUCCESS; web app notified",
    ):
        assert read_outcome(recorded, RUN, message) == Outcome(status, delivered)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("SUCCESS in 1.23s; web app notified", Outcome("SUCCESS", True)),
        ("SUCCESS in 1.23s; web app NOT notified, result kept", Outcome("SUCCESS", False)),
        ("FAIL in 2.00s; web app notified: ValueError: boom", Outcome("FAIL", True)),
        ("FAIL in 2.00s; web app NOT notified, result kept: boom", Outcome("FAIL", False)),
        ("Execution was cancelled by the runner", Outcome(None, False)),
        ("", Outcome(None, None)),
    ],
)
def test_runs_without_a_record_are_read_from_their_old_message(message, expected):
    assert legacy_outcome(message) == expected
    for unrecorded in (None, artifact(None), artifact({})):
        assert read_outcome(unrecorded, RUN, message) == expected


def test_another_runs_record_under_the_same_task_id_does_not_count():
    other = artifact(outcome_metadata("t", "SUCCESS", True), run_id=uuid.uuid4())
    assert read_outcome(other, RUN, "FAIL in 1s; web app notified") == Outcome("FAIL", True)


def test_a_status_that_is_not_the_web_apps_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="SUCCESS.*FAIL.*payloads"):
        outcome_metadata("t", "DONE", True)


def test_the_key_is_prefects_shape():
    key = outputs_key("3F0C1A52-5B7E-4D2A-9C1E-2A6F3E1D9B40")
    assert (
        key == "outputs-3f0c1a52-5b7e-4d2a-9c1e-2a6f3e1d9b40" and len(outputs_key("x" * 200)) == 100
    )
