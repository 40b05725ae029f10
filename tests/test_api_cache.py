"""What the cluster API keeps in memory: one read of a model's config however many callers ask.

Against the session's real Prefect server; the directory's own read is counted
(it still reads the server), so the test sees how many reads a burst made.
"""

from __future__ import annotations

import threading
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
