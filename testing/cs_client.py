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
without a token is that web app. `Cluster` below is the later web app's side of the v1
protocol (login, bearer token, `/api/v1` paths), which tests/test_api_v1.py drives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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


# ---- v1: Compute Studio's later clusters (webapp/apps/users/models.py:Cluster) -------------

V1_TIMEOUT_IN_SECONDS = 3.5  # the later compute.py's TIMEOUT_IN_SECONDS
RENEW_AFTER_EXPIRY = timedelta(seconds=60)  # C/S renews once expires_at is 60 s past


class ClusterLoginException(Exception):
    """What C/S raises when the cluster does not answer its login with 200."""


@dataclass
class Cluster:
    """C/S's `Cluster` row of version v1, behaving as its methods do (written anew).

    `ensure_access_token` logs in with the form `username`/`password` when there is no
    token or when `access_token_expires_at` is more than 60 s past (C/S's own rule), and
    reads `expires_at` with `datetime.fromisoformat`; `headers()` is the bearer header;
    `path_prefix` is `/api/v1`. The calls below are the web app's: `Compute.submit_job`
    with `path_prefix="/api/v1/jobs"` (3.5 s per attempt, five attempts, 200 or 201, the
    job id from `task_id` or `id`; headers taken once, before the attempts),
    `SyncProjects` (200 only, a list is success), `Build.start` / `refresh_status`.
    """

    url: str
    service_account: str
    cluster_password: str
    access_token: str | None = None
    access_token_expires_at: datetime | None = None
    version: str = "v1"
    logins: int = 0

    def ensure_access_token(self) -> None:
        missing_token = self.access_token is None
        is_expired = (
            self.access_token_expires_at is None
            or self.access_token_expires_at < datetime.now(UTC) - RENEW_AFTER_EXPIRY
        )
        if not (missing_token or is_expired):
            return
        response = requests.post(
            f"{self.url}/api/v1/login/access-token",
            data={"username": self.service_account, "password": self.cluster_password},
            timeout=30,
        )
        if response.status_code != 200:
            raise ClusterLoginException(
                f"Expected 200, got {response.status_code}: {response.text}"
            )
        data = response.json()
        self.access_token = data["access_token"]
        self.access_token_expires_at = datetime.fromisoformat(data["expires_at"])
        self.logins += 1

    def headers(self) -> dict[str, str]:
        self.ensure_access_token()
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def path_prefix(self) -> str:
        return "/api/v1"

    def submit_job(
        self, owner: str, title: str, task_name: str, task_kwargs: dict[str, Any], tag: str
    ) -> str:
        """`Compute.submit_job(..., path_prefix="/api/v1/jobs")`: the job id it stores."""
        url = f"{self.url}/api/v1/jobs/{owner}/{title}/"
        body = {"task_name": task_name, "tag": tag, "task_kwargs": task_kwargs}
        headers, last = self.headers(), "no attempt made"
        for _ in range(MAX_ATTEMPTS_SUBMIT_JOB + 1):
            try:
                response = requests.post(
                    url, json=body, timeout=V1_TIMEOUT_IN_SECONDS, headers=headers
                )
            except requests.exceptions.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in (200, 201):
                data = response.json()
                return data.get("task_id") or data.get("id")
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        raise WorkersUnreachableError(f"{task_name} not submitted: {last}")

    def sync_projects(self, projects: list[dict[str, Any]]) -> tuple[bool, Any]:
        """`SyncProjects.submit_job` for a v1 cluster: a list answered is success."""
        url = f"{self.url}/api/v1/projects/sync/"
        headers = self.headers()
        for _ in range(MAX_ATTEMPTS_SUBMIT_JOB + 1):
            try:
                response = requests.post(
                    url, json=projects, timeout=V1_TIMEOUT_IN_SECONDS, headers=headers
                )
            except requests.exceptions.RequestException:
                continue
            if response.status_code == 200:
                data = response.json()
                return (True if isinstance(data, list) else data["status"] == "SUCCESS"), data
        raise WorkersUnreachableError("/api/v1/projects/sync/ not answered 200 in five attempts")

    def start_build(self, owner: str, title: str) -> dict[str, Any]:
        """`Build.start`: POST …/builds/OWNER/TITLE/ with `{}`, raise on an error status."""
        response = requests.post(
            f"{self.url}{self.path_prefix}/builds/{owner}/{title}/",
            json={},
            headers=self.headers(),
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def refresh_build(self, cluster_build_id: int) -> dict[str, Any]:
        """`Build.refresh_status`: GET …/builds/ID/, raise on an error status."""
        response = requests.get(
            f"{self.url}{self.path_prefix}/builds/{cluster_build_id}/",
            json={},
            headers=self.headers(),
            timeout=30,
        )
        response.raise_for_status()
        return response.json()
