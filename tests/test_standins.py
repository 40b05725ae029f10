"""The web app stand-in's records mean what the tests read into them.

`accepted()` is what a real web app would have stored: a PUT it answered 503
(`fail_next`) or 401 (wrong token) is received, not accepted. A test that
counts deliveries with a stand-in that counts refusals passes for the wrong reason.
"""

from __future__ import annotations

import httpx
import pytest
from prefect_cs.testing.webapp_standin import WebAppStub


@pytest.fixture
def stub():
    stub = WebAppStub(fail_next=1).start()
    yield stub
    stub.stop()


def put(stub: WebAppStub, token: str) -> int:
    headers = {"Authorization": f"Token {token}"}
    body = {"task_id": "t1", "status": "SUCCESS"}
    return httpx.put(f"{stub.url}/outputs/api/", json=body, headers=headers, timeout=10).status_code


def test_accepted_counts_only_2xx_answers(stub):
    assert put(stub, stub.token) == 503  # fail_next
    assert put(stub, "wrong-token") == 401
    assert stub.accepted("/outputs/api/") == []
    assert put(stub, stub.token) == 200
    assert [r.status for r in stub.received("/outputs/api/")] == [503, 401, 200]
    (accepted,) = stub.accepted("/outputs/api/")
    assert accepted.headers["Authorization"] == f"Token {stub.token}"
    assert stub.accepted("/inputs/api/") == []


def test_wait_for_waits_for_an_accepted_put(stub):
    assert put(stub, "wrong-token") == 503  # fail_next comes first
    with pytest.raises(AssertionError, match="got 0 PUT /outputs/api/"):
        stub.wait_for("/outputs/api/", timeout=0.2)
    put(stub, stub.token)
    assert len(stub.wait_for("/outputs/api/", timeout=5)) == 1
