"""The web app the platform reports to, with bounded, backed-off delivery.

A result that cannot be delivered is never dropped: the caller keeps it (see
`prefect_cs.flows.notify`) and `prefect-cs results resend` delivers it later.
"""

from __future__ import annotations

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
    token: SecretStr = Field(description="Sent as 'Authorization: Token <token>'.")
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
        headers = {"Authorization": f"Token {self.token.get_secret_value()}"}
        retry = Retry(
            attempts=attempts,
            backoff=backoff,
            max_delay=MAX_BACKOFF_SECONDS,
            timeout=timeout,
            retry_on=RETRYABLE_STATUS.__contains__,
        )
        try:
            return request("PUT", url, retry, json=payload, headers=headers)
        except RequestFailed as exc:
            raise DeliveryError(str(exc)) from exc
