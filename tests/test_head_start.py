"""The head start begun before RUNNING (flows/head_start.py) is taken only for exactly the model
and tag the flow loaded, and closed otherwise; tests/test_docker_tier.py shows it begun by
the engine's import and used, on real parts."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.flows import head_start


class Started:
    """A started call that records whether it was closed (what EarlyCall.close removes)."""

    def __init__(self) -> None:
        self.closed = False

    def call(self, function: str, args: list) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def model(title: str = "Demo", memory: str = "1Gi") -> ModelConfig:
    return ModelConfig(owner="tests", title=title, repo_url="/tmp/nowhere", memory=memory)


ENTRY = PublishedTag(
    tag="v1", tier="docker", python="/usr/bin/python3", image="registry/demo@sha256:" + "0" * 64
)


def begun_for(m: ModelConfig, entry: PublishedTag) -> Started:
    started = Started()
    done: Future = Future()
    done.set_result(started)
    pending: Future = Future()
    pending.set_result((m, entry, head_start.HeadStart(done)))
    head_start._BEFORE_RUNNING.pending = pending
    return started


def test_the_same_model_and_tag_take_it():
    started = begun_for(model(), ENTRY)
    taken = head_start._take(model(), ENTRY)
    assert taken is not None and not started.closed
    assert head_start._take(model(), ENTRY) is None, "taken once"


@pytest.mark.parametrize(
    "loaded, entry",
    [
        (model(title="Other"), ENTRY),
        (model(memory="2Gi"), ENTRY),  # republished between the two reads: other bounds
        (model(), ENTRY.model_copy(update={"image": "registry/demo@sha256:" + "1" * 64})),
    ],
)
def test_anything_else_closes_it_and_starts_its_own(loaded, entry):
    started = begun_for(model(), ENTRY)
    assert head_start._take(loaded, entry) is None
    assert started.closed


def test_a_run_that_never_reaches_its_call_closes_it():
    started = begun_for(model(), ENTRY)
    head_start.discard_before_running()
    assert started.closed and head_start._BEFORE_RUNNING.pending is None


def test_nothing_is_begun_outside_a_flow_run(monkeypatch):
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    head_start._BEFORE_RUNNING.pending = None
    head_start.begin_before_running()
    assert head_start._BEFORE_RUNNING.pending is None
