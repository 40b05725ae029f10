"""Signed GitHub deliveries, the receiver as a real `prefect-cs webhook serve` process, and
publish runs read back from the server — shared by the webhook tests and the load benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect_cs.services.webhook.signature import signature
from prefect_cs.testing.processes import end_process
from prefect_cs.testing.scratch import free_port


def start_receiver(
    env: dict[str, str], log: Path, timeout: float = 60
) -> tuple[subprocess.Popen, str]:
    """`prefect-cs webhook serve` on a free port; returns once /health answers."""
    port = free_port()
    cli = Path(sys.executable).parent / "prefect-cs"
    proc = subprocess.Popen(
        [str(cli), "webhook", "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"receiver did not answer /health within {timeout}s")


stop_receiver = end_process  # terminate, then kill after 10 s, as for every server tests start


def tag_push(repo_full_name: str, tag: str, sha: str) -> dict[str, Any]:
    """The parts of a GitHub `push` payload for a new tag that the receiver reads."""
    return {
        "ref": f"refs/tags/{tag}",
        "before": "0" * 40,
        "after": sha,
        "created": True,
        "deleted": False,
        "head_commit": {"id": sha},
        "repository": {
            "full_name": repo_full_name,
            "html_url": f"https://github.com/{repo_full_name}",
            "clone_url": f"https://github.com/{repo_full_name}.git",
            "ssh_url": f"git@github.com:{repo_full_name}.git",
        },
    }


def pull_request(
    repo: str, number: int, action: str, head: str, merge: str | None = None, merged: bool = False
) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": head},
            "merged": merged,
            "merge_commit_sha": merge,
        },
        "repository": {"full_name": repo, "html_url": f"https://github.com/{repo}"},
    }


def deliver(
    url: str,
    secret: str | None,
    event: str,
    payload: Any,
    delivery: str | None = None,
    body: bytes | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST one delivery as GitHub does; secret=None sends it unsigned."""
    raw = body if body is not None else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = signature(secret, raw)
    return (client or httpx).post(url + "/github", content=raw, headers=headers, timeout=30)


def publish_runs(deployment_id: UUID) -> list[Any]:
    """Every flow run of the publish deployment (any state)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:  # the API serves at most 200 per page
            page = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                return runs


def runs_with(deployment_id: UUID, **parameters: Any) -> list[Any]:
    """The publish runs whose parameters include all of `parameters`."""
    return [
        r
        for r in publish_runs(deployment_id)
        if all(r.parameters.get(k) == v for k, v in parameters.items())
    ]


def wait_for_runs(
    deployment_id: UUID,
    sha: str | None = None,
    count: int = 1,
    timeout: float = 60,
    **parameters: Any,
) -> list[Any]:
    """Poll until `count` runs match (automations are asynchronous); bounded."""
    if sha is not None:
        parameters["sha"] = sha
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = runs_with(deployment_id, **parameters)
        if len(runs) >= count:
            return runs
        time.sleep(0.3)
    raise AssertionError(f"no {count} publish run(s) with {parameters} after {timeout}s")


def runs_stay(deployment_id: UUID, count: int, hold: float = 1.5, **parameters: Any) -> list[Any]:
    """That no more than `count` runs match, checked again and again for `hold` seconds (it fails
    the moment one more appears). Absence can only be seen over some time; call it after a
    positive control's run exists (`wait_for_runs`), so the pipeline is known to be delivering."""
    deadline = time.monotonic() + hold
    while True:
        runs = runs_with(deployment_id, **parameters)
        assert len(runs) <= count, f"{len(runs)} publish runs with {parameters}, expected {count}"
        if time.monotonic() >= deadline:
            return runs
        time.sleep(0.2)


def wait_until(condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    """`condition()` as soon as it is truthy; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def new_sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]
