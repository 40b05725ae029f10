"""A client that calls the cluster the way Compute Studio's web app does (its compute.py).

requests, a 1.7 s timeout per attempt, a retry on a timeout or a refused
connection, an error after the fifth attempt, and anything but 200 counted as
not submitted. The tests drive the cluster API with it, so "the web app gets its
answer within its budget" is checked with the web app's own rules.

C/S 1.6's three callers read the answer each in its own way (webapp/apps/comp/compute.py,
written anew here, not copied): `Compute` (sim, parse) takes `data["task_id"]`;
`SyncCompute` (version, defaults) returns on an empty body, else `(data["status"] ==
"SUCCESS", data)`; `SyncProjects` posts the projects list to /sync/ through SyncCompute.
C/S 1.6 sends no Authorization header (its `remote_submit_job` drops `headers`): a client
without a token is that web app.
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

    def submit_async(
        self, owner: str, title: str, task_name: str, task_kwargs: dict[str, Any], tag=None
    ) -> str:
        """C/S's `Compute.submit_job` (sim, parse): the job id it stores, `data["task_id"]`."""
        return self.submit_job(owner, title, task_name, task_kwargs, tag)["task_id"]

    def submit_sync(
        self, owner: str, title: str, task_name: str, task_kwargs: dict[str, Any], tag=None
    ) -> tuple[bool, dict[str, Any]]:
        """C/S's `SyncCompute.submit_job` (version, defaults): `(status == "SUCCESS", data)`."""
        data = self.submit_job(owner, title, task_name, task_kwargs, tag)
        return data["status"] == "SUCCESS", data

    def sync_projects(self, projects: list[dict[str, Any]]) -> tuple[bool, Any] | None:
        """C/S's `SyncProjects.submit_job`: None on an empty body, else it reads
        `data["status"]` (a KeyError there was a 500 for the project's owner)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        for attempt in range(1, MAX_ATTEMPTS_SUBMIT_JOB + 2):
            try:
                response = requests.post(
                    f"{self.base_url}/sync/", json=projects, timeout=self.timeout, headers=headers
                )
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
                continue
            if response.status_code == 200:
                self.attempts_made.append(attempt)
                if not response.text:
                    return None
                data = response.json()
                return data["status"] == "SUCCESS", data
        raise WorkersUnreachableError("/sync/ not answered 200 in five attempts")
