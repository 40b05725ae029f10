"""A client that calls the cluster the way Compute Studio's web app does (its compute.py).

requests, a 1.7 s timeout per attempt, a retry on a timeout or a refused
connection, an error after the fifth attempt, and anything but 200 counted as
not submitted. The tests drive the cluster API with it, so "the web app gets its
answer within its budget" is checked with the web app's own rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

TIMEOUT_IN_SECONDS = 1.7
MAX_ATTEMPTS_SUBMIT_JOB = 4  # C/S raises once attempts exceed this: five in all


class WorkersUnreachableError(Exception):
    """What C/S raises when no attempt got a 200."""


@dataclass
class ComputeStudioClient:
    base_url: str
    token: str | None = None
    timeout: float = TIMEOUT_IN_SECONDS
    attempts_made: list[int] = field(default_factory=list)

    def submit_job(
        self,
        owner: str,
        title: str,
        task_name: str,
        task_kwargs: dict[str, Any],
        tag: str | None = None,
        task_id: str | None = None,
    ) -> dict[str, Any]:
        """POST {cluster}/{owner}/{title}/ until a 200, at most five times; its JSON."""
        body: dict[str, Any] = {"task_name": task_name, "tag": tag, "task_kwargs": task_kwargs}
        if task_id:
            body["task_id"] = task_id
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        url = f"{self.base_url}/{owner}/{title}/"
        attempts, last = 0, "no attempt made"
        while attempts <= MAX_ATTEMPTS_SUBMIT_JOB:
            attempts += 1
            try:
                response = requests.post(url, json=body, timeout=self.timeout, headers=headers)
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                self.attempts_made.append(attempts)
                return response.json()
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        self.attempts_made.append(attempts)
        raise WorkersUnreachableError(f"{task_name} not submitted in {attempts} attempts: {last}")
