"""The web app the platform reports to, with bounded, backed-off delivery.

A result that cannot be delivered is never dropped: the caller keeps it (see
`prefect_cs.flows.notify`) and `prefect-cs results resend` delivers it later.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect.blocks.core import Block
from prefect_cs.core.errors import DeliveryError
from pydantic import Field, SecretStr

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class WebApp(Block):
    """Where simulation and parse results are PUT (Compute Studio's `/outputs/api/`, `/inputs/api/`)."""

    _block_type_name = "CS Web App"
    _block_type_slug = "cs-web-app"
    _description = "Base URL and token of the web app that receives results."

    base_url: str = Field(description="e.g. https://compute.studio")
    token: SecretStr = Field(description="Sent as 'Authorization: Token <token>'.")

    def put(
        self,
        path: str,
        payload: dict[str, Any],
        attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,
    ) -> httpx.Response:
        """PUT with exponential backoff on network errors and retryable statuses; raise DeliveryError at the end."""
        url = self.base_url.rstrip("/") + path
        headers = {"Authorization": f"Token {self.token.get_secret_value()}"}
        last = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                response = httpx.put(url, json=payload, headers=headers, timeout=timeout)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRYABLE_STATUS:
                break
        raise DeliveryError(f"PUT {url} failed after {attempt + 1} attempt(s): {last}")
