"""One retrying HTTP call for everything the platform sends out (web app results, GitHub).

Why one: each caller had grown its own loop, and the loops drifted apart
(different backoff formulas, different ideas of which answers deserve another
try). Here the policy is data (`Retry`) and the loop is written once:
bounded attempts, a timeout per attempt, exponential backoff with a cap, and
another attempt only after a transport error or a status the policy names —
5xx and 429 by default, because any other 4xx will not get better by asking
again.

A call that never succeeds raises `RequestFailed`. Its message names the
method, the URL (userinfo removed) and the last status or transport error;
request headers, where tokens travel, are never part of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prefect_cs.core.errors import CSError

BODY_EXCERPT = 200  # characters of an error answer kept in the message
REASON_LIMIT = 300
USERINFO_RE = re.compile(r"//[^/@]*@")


def server_trouble(status: int) -> bool:
    """5xx or 429 (rate limited): answers that may be different next time."""
    return status >= 500 or status == 429


@dataclass(frozen=True)
class Retry:
    """How hard to try: `attempts` tries of `timeout` seconds, `backoff`·2ⁿ apart (at most
    `max_delay`)."""

    attempts: int = 2
    backoff: float = 1.0
    max_delay: float = 30.0
    timeout: float = 10.0
    retry_on: Callable[[int], bool] = server_trouble

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number `attempt` (0-based): none before the first."""
        return 0.0 if attempt == 0 else min(self.max_delay, self.backoff * 2 ** (attempt - 1))


class RequestFailed(CSError, RuntimeError):
    """No answer under 300 within the attempts; `status` is the last HTTP status (None: no
    answer)."""

    def __init__(self, method: str, url: str, attempts: int, status: int | None, reason: str):
        self.method, self.url, self.attempts = method, safe_url(url), attempts
        self.status, self.reason = status, reason
        super().__init__(f"{method} {self.url} failed after {attempts} attempt(s): {reason}")


def request(
    method: str,
    url: str,
    retry: Retry,
    *,
    client: httpx.Client | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """The first answer under 300; RequestFailed once `retry` gives up. kwargs go to httpx."""
    send = client.request if client is not None else httpx.request
    made, status, reason = 0, None, "no attempt made"
    for attempt in range(retry.attempts):
        if attempt:
            time.sleep(retry.delay(attempt))
        made = attempt + 1
        try:
            response = send(method, url, timeout=retry.timeout, **kwargs)
        except httpx.HTTPError as exc:
            status, reason = None, f"{type(exc).__name__}: {exc}"[:REASON_LIMIT]
            continue
        if response.status_code < 300:
            return response
        status = response.status_code
        excerpt = response.text[:BODY_EXCERPT]
        reason = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        if not retry.retry_on(status):
            break
    raise RequestFailed(method, url, made, status, reason)


def safe_url(url: str) -> str:
    """The URL without user:password@, for messages and logs."""
    return USERINFO_RE.sub("//", url, count=1)
