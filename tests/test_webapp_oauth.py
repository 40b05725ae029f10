"""Results to a web app that authenticates the cluster as C/S v1's did: OAuth2 client
credentials at `{web app}/o/token/`, then `Authorization: Bearer <token>` (blocks/webapp.py),
against a real HTTP stand-in that hands out and checks the tokens."""

from __future__ import annotations

import uuid

import pytest
from prefect_cs.blocks.webapp import WebApp
from prefect_cs.core.errors import DeliveryError
from prefect_cs.testing.webapp_standin import OAuthWebAppStub


@pytest.fixture
def stub():
    started = OAuthWebAppStub(client_secret=f"secret-{uuid.uuid4().hex}").start()
    yield started
    started.stop()


def webapp_for(stub: OAuthWebAppStub, secret: str | None = None) -> WebApp:
    return WebApp(
        base_url=stub.url, client_id=stub.client_id, client_secret=secret or stub.client_secret
    )


def test_results_go_with_one_bearer_token_per_lifetime(stub):
    webapp = webapp_for(stub)
    for n in range(3):
        assert webapp.put("/outputs/api/", {"task_id": str(n)}, attempts=1).status_code == 200
    assert len(stub.token_requests()) == 1, "the token is kept until it nears its expiry"
    puts = stub.accepted("/outputs/api/")
    assert len(puts) == 3
    assert {p.headers["Authorization"] for p in puts} == {f"Bearer {stub.issued[0]}"}
    assert not [p for p in puts if stub.client_secret in str(p.headers)]


def test_a_token_near_its_expiry_is_renewed_before_use(stub):
    stub.expires_in = 30  # under RENEW_EARLY: each delivery asks for a fresh one
    webapp = webapp_for(stub)
    webapp.put("/outputs/api/", {"task_id": "1"}, attempts=1)
    webapp.put("/outputs/api/", {"task_id": "2"}, attempts=1)
    assert len(stub.token_requests()) == 2


def test_a_revoked_token_is_replaced_once_and_the_result_still_lands(stub):
    webapp = webapp_for(stub)
    webapp.put("/outputs/api/", {"task_id": "1"}, attempts=1)
    stub.revoke()
    assert webapp.put("/outputs/api/", {"task_id": "2"}, attempts=1).status_code == 200
    statuses = [r.status for r in stub.received("/outputs/api/")]
    assert statuses == [200, 401, 200], statuses
    assert len(stub.token_requests()) == 2


def test_a_wrong_client_secret_is_a_delivery_error_naming_the_fix(stub):
    wrong = f"wrong-{uuid.uuid4().hex}"
    with pytest.raises(DeliveryError) as raised:
        webapp_for(stub, secret=wrong).put("/outputs/api/", {"task_id": "1"}, attempts=1)
    message = str(raised.value)
    assert "OAuth application" in message and "--client-secret-stdin" in message, message
    assert wrong not in message and stub.client_secret not in message
    assert stub.received("/outputs/api/") == [], "no PUT without a token"


def test_a_block_with_neither_token_nor_client_names_both_ways(stub):
    with pytest.raises(DeliveryError) as raised:
        WebApp(base_url=stub.url).put("/outputs/api/", {"task_id": "1"}, attempts=1)
    assert "--token-stdin" in str(raised.value) and "--client-id" in str(raised.value)
