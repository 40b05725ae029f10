"""What the cluster API keeps in memory: one read of a model's config however many callers ask.

Against the session's real Prefect server; the directory's own read is counted
(it still reads the server), so the test sees how many reads a burst made.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.registry.configs import register
from prefect_cs.services.api_cache import ModelDirectory

CALLERS = 20


@pytest.fixture
def directory(platform):
    register(ModelConfig(owner="tests", title="Cached", repo_url="https://example.org/cached.git"))
    found = ModelDirectory(ttl_seconds=60)
    reads, read = [], found._read

    def counted(*args):
        reads.append(args)
        return read(*args)

    found._read = counted
    yield found, reads
    found.close()


def at_once(call, count: int = CALLERS) -> list:
    """`count` threads released together, each making `call`."""
    gate = threading.Barrier(count)

    def one(_: int):
        gate.wait()
        return call()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_a_burst_of_callers_makes_one_read_of_the_config(directory):
    models, reads = directory
    found = at_once(lambda: models.model("tests", "Cached"))
    assert {m.repo_url for m in found} == {"https://example.org/cached.git"}
    assert len(reads) == 1, f"{len(reads)} reads of the server for {CALLERS} callers"


def test_fresh_reads_again_once_for_callers_waiting_together(directory):
    models, reads = directory
    models.model("tests", "Cached")
    models.model("tests", "Cached")  # young: from memory
    assert len(reads) == 1
    at_once(lambda: models.model("tests", "Cached", fresh=True))
    assert 2 <= len(reads) <= 4, f"{len(reads)} reads"  # those who waited take the next read


def test_a_burst_reads_a_deployment_id_once(directory):
    from prefect_cs.deployments.deploy import create_flow_deployment
    from prefect_cs.testing.noop_flow import NOOP_ENTRYPOINT

    models, _ = directory
    client = models.client()
    made = create_flow_deployment(client, NOOP_ENTRYPOINT, "noop-cached", "cs-process")
    reads, read = [], client.read_deployment_by_name

    def counted(name):
        reads.append(name)
        return read(name)

    client.read_deployment_by_name = counted
    name = "noop/noop-cached"
    assert set(at_once(lambda: models.deployment_id(name))) == {made}
    assert reads == [name]


def test_an_expired_config_is_answered_at_once_and_read_again_behind(platform):
    import time

    register(ModelConfig(owner="tests", title="Aging", repo_url="https://example.org/v1.git"))
    models = ModelDirectory(ttl_seconds=0.5)
    try:
        assert models.model("tests", "Aging").repo_url.endswith("v1.git")
        register(ModelConfig(owner="tests", title="Aging", repo_url="https://example.org/v2.git"))
        time.sleep(0.6)
        # expired: the caller gets what is known, a thread reads the registry again
        assert models.model("tests", "Aging").repo_url.endswith("v1.git")
        deadline = time.monotonic() + 10
        while not models.model("tests", "Aging").repo_url.endswith("v2.git"):
            assert time.monotonic() < deadline, "the config was not read again behind the answer"
            time.sleep(0.05)
    finally:
        models.close()


# ---- defaults: one entry per resolved meta parameters; one call per key at a time -------


def test_defaults_identity_merges_the_empty_request_and_its_resolved_form():
    from prefect_cs.flows.inputs import defaults_identity, meta_values

    answer = {
        "status": "SUCCESS",
        "meta_parameters": {
            "schema": {"labels": {}, "operators": {"array_first": True}},
            "year": {"title": "Year", "value": [{"value": 2026}]},
            "use_full_sample": {"title": "Full", "value": [{"value": True}]},
        },
    }
    base = meta_values(answer)
    assert base == {"year": 2026, "use_full_sample": True}
    cs_second = {"year": [{"value": 2026}], "use_full_sample": [{"value": True}]}
    assert defaults_identity({}, base) == defaults_identity(cs_second, base) == {}
    assert defaults_identity({"year": 2026}, base) == {}
    assert defaults_identity({"year": [{"value": 2025}]}, base) == {
        "year": 2025,
        "use_full_sample": True,
    }
    assert defaults_identity(cs_second, None) == {"year": 2026, "use_full_sample": True}
    assert meta_values({"status": "FAIL"}) is None


def test_single_flight_runs_one_call_per_key_and_outlives_its_waiters():
    from concurrent.futures import TimeoutError as FutureTimeout

    from prefect_cs.services.api_cache import SingleFlight

    flights, calls = SingleFlight(), []

    def slow(value: str) -> str:
        calls.append(value)
        time.sleep(0.5)
        return value

    futures = at_once(lambda: flights.start("key", slow, "first"))
    assert len({id(f) for f in futures}) == 1 and calls == ["first"]
    with pytest.raises(FutureTimeout):
        futures[0].result(timeout=0.05)  # a client giving up at its timeout...
    assert futures[0].result(timeout=5) == "first"  # ...leaves the call to finish
    assert flights.in_flight() == 0
    assert flights.start("key", slow, "again").result(timeout=5) == "again"  # none kept
