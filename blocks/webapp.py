"""The web app the platform reports to, with bounded, backed-off delivery.

A result that cannot be delivered is never dropped: the caller keeps it (see
`prefect_cs.flows.notify`) and `prefect-cs results resend` delivers it later.

Two ways to prove who is calling, as Compute Studio's two protocols did: C/S 1.6's
fixed `Authorization: Token <token>`, or v1's OAuth2 client credentials (its cluster
asked `{web app}/o/token/` for a bearer token with the client id and secret of the
web app's OAuth application, and renewed it when it expired).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from prefect.blocks.core import Block
from prefect_cs.core.errors import DeliveryError
from prefect_cs.core.http import RequestFailed, Retry, request
from pydantic import Field, SecretStr

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0  # CS_NOTIFY_ATTEMPTS may be 20: never wait hours between tries


class WebApp(Block):
    """Where simulation and parse results are PUT (Compute Studio's `/outputs/api/`,
    `/inputs/api/`)."""

    _block_type_name = "CS Web App"
    _block_type_slug = "cs-web-app"
    _description = "Base URL and token of the web app that receives results."

    base_url: str = Field(description="e.g. https://compute.studio")
    token: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Token <token>' (C/S 1.6)."
    )
    client_id: str | None = Field(
        default=None,
        description="The web app's OAuth application (C/S v1): results go with a bearer token"
        " from <base_url>/o/token/ (client credentials), not `token`.",
    )
    client_secret: SecretStr | None = Field(default=None, description="That application's secret.")
    outputs_block: str | None = Field(
        default=None,
        description="The storage block (`<slug>/<name>`, e.g. `gcs-bucket/cs-outputs`) this web"
        " app reads output zips from (C/S: its BUCKET); unset: CS_OUTPUTS_BLOCK's.",
    )

    def put(
        self,
        path: str,
        payload: dict[str, Any],
        attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,
    ) -> httpx.Response:
        """PUT with exponential backoff on network errors and retryable statuses; raise
        DeliveryError at the end."""
        url = self.base_url.rstrip("/") + path
        retry = Retry(
            attempts=attempts,
            backoff=backoff,
            max_delay=MAX_BACKOFF_SECONDS,
            timeout=timeout,
            retry_on=RETRYABLE_STATUS.__contains__,
        )
        try:
            headers = {"Authorization": self.authorization(timeout)}
            try:
                return request("PUT", url, retry, json=payload, headers=headers)
            except RequestFailed as exc:
                if exc.status != 401 or not self.client_id:
                    raise
                # A bearer token the web app revoked (or forgot) before its expiry: one new one.
                headers = {"Authorization": self.authorization(timeout, renew=True)}
                return request("PUT", url, retry, json=payload, headers=headers)
        except RequestFailed as exc:
            raise DeliveryError(str(exc)) from exc

    def authorization(self, timeout: float = 10.0, renew: bool = False) -> str:
        """The Authorization header: OAuth2 client credentials when set, else the token."""
        if self.client_id and self.client_secret:
            return f"Bearer {_oauth_token(self, timeout, renew)}"
        if self.token is None:
            raise DeliveryError(
                f"the web app block for {self.base_url} has neither a token nor an OAuth client:"
                " run `prefect-cs webapp set --url URL --token-stdin` (C/S 1.6) or"
                " `prefect-cs api users add NAME --url URL --client-id ID --client-secret-stdin`"
            )
        return f"Token {self.token.get_secret_value()}"


RENEW_EARLY = 60.0  # seconds before a bearer token's expiry that a new one is asked for
_bearer: dict[tuple[str, str], tuple[str, float]] = {}  # (url, client id) -> token, renew at
_bearer_lock = threading.Lock()


def _oauth_token(webapp: WebApp, timeout: float, renew: bool) -> str:
    """A bearer token from the web app's `/o/token/` (client credentials), kept in this process
    until RENEW_EARLY before it expires: one token request per flow run, not per PUT."""
    url = webapp.base_url.rstrip("/") + "/o/token/"
    key = (url, webapp.client_id or "")
    with _bearer_lock:
        kept = _bearer.get(key)
        if kept and not renew and time.monotonic() < kept[1]:
            return kept[0]
        secret = webapp.client_secret.get_secret_value() if webapp.client_secret else ""
        form = {"grant_type": "client_credentials", "client_id": key[1], "client_secret": secret}
        retry = Retry(attempts=3, backoff=1.0, max_delay=10.0, timeout=timeout)
        fix = (
            "check the web app's OAuth application (client credentials grant) and run"
            " `prefect-cs api users add NAME --url URL --client-id ID --client-secret-stdin`"
        )
        try:
            answer = request("POST", url, retry, data=form).json()
            token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 3600))
        except RequestFailed as exc:
            raise DeliveryError(f"no bearer token from the web app: {exc}; {fix}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DeliveryError(f"{url} answered no access_token: {fix}") from exc
        _bearer[key] = (token, time.monotonic() + max(lifetime - RENEW_EARLY, 0.0))
        return token
