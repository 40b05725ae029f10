"""The retrying HTTP helper and the GitHub client on in-process transports (no server, no sleep).

What each caller relies on: how many tries, how long between them, which
answers are tried again, and an error that names the URL and the last status
but never a header or a token.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import httpx
import pytest
from prefect_cs.core import http
from prefect_cs.core.github import MAX_PR_FILE_PAGES, GitHubClient, GitHubError
from prefect_cs.core.http import RequestFailed, Retry, request

TOKEN = "secret-token-value"
URL = "http://service.test/api/thing"


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    delays: list[float] = []
    monkeypatch.setattr(http.time, "sleep", delays.append)
    return delays


def answering(*replies: int | Exception) -> tuple[httpx.Client, list[httpx.Request]]:
    """A client whose transport gives `replies` in order (the last one repeats)."""
    seen: list[httpx.Request] = []
    queue: Iterator[int | Exception] = iter(replies)
    last: list[int | Exception] = [replies[-1]]

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        reply = next(queue, last[0])
        if isinstance(reply, Exception):
            raise reply
        return httpx.Response(reply, json={"ok": reply < 300})

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def call(client: httpx.Client, retry: Retry, url: str = URL) -> httpx.Response:
    return request("PUT", url, retry, client=client, headers={"Authorization": f"Token {TOKEN}"})


def test_5xx_and_429_are_retried_with_exponential_backoff(slept):
    client, seen = answering(503, 429, 500, 200)
    assert call(client, Retry(attempts=5, backoff=0.5)).status_code == 200
    assert len(seen) == 4 and slept == [0.5, 1.0, 2.0]


def test_backoff_is_capped(slept):
    client, _ = answering(500)
    with pytest.raises(RequestFailed):
        call(client, Retry(attempts=6, backoff=1.0, max_delay=3.0))
    assert slept == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_other_4xx_is_not_retried_and_the_error_names_url_and_status_not_the_token(slept):
    client, seen = answering(404)
    with pytest.raises(RequestFailed) as failed:
        call(client, Retry(attempts=5))
    assert len(seen) == 1 and slept == []
    error = failed.value
    assert (error.status, error.attempts, error.url) == (404, 1, URL)
    assert str(error).startswith(f"PUT {URL} failed after 1 attempt(s): HTTP 404")
    assert TOKEN not in str(error)


def test_attempts_are_bounded_and_connection_errors_are_retried(slept):
    client, seen = answering(httpx.ConnectError("connection refused"))
    with pytest.raises(RequestFailed) as failed:
        call(client, Retry(attempts=3))
    assert len(seen) == 3 and failed.value.status is None
    assert "ConnectError: connection refused" in str(failed.value)


def test_each_attempt_gets_the_timeout(slept):
    client, seen = answering(502, 201)
    call(client, Retry(attempts=2, timeout=4.5))
    assert [r.extensions["timeout"]["read"] for r in seen] == [4.5, 4.5]


def test_the_policy_decides_which_statuses_are_retried(slept):
    webapp_like = Retry(attempts=3, retry_on={408, 503}.__contains__)
    client, seen = answering(408, 501)
    with pytest.raises(RequestFailed) as failed:
        call(client, webapp_like)
    assert len(seen) == 2 and failed.value.status == 501


def test_userinfo_never_reaches_the_message(slept):
    client, _ = answering(500)
    with pytest.raises(RequestFailed) as failed:
        call(client, Retry(attempts=1), url=f"http://user:{TOKEN}@service.test/x")
    assert TOKEN not in str(failed.value) and "http://service.test/x" in str(failed.value)


# ---- the GitHub client ----------------------------------------------------------------


def github(handler: Callable[[httpx.Request], httpx.Response]) -> GitHubClient:
    return GitHubClient(
        "http://github.test/api/",
        TOKEN,
        writes=Retry(attempts=2, backoff=1.0, max_delay=2.0, timeout=5.0),
        transport=httpx.MockTransport(handler),
    )


def test_pr_files_are_paginated_bounded_and_skip_removed_files(slept):
    pages: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.path == "/api/repos/o/r/pulls/7/files"
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        page = int(req.url.params["page"])
        pages.append(page)
        files = [{"filename": f"p{page}-{i}", "status": "modified"} for i in range(100)]
        files[0]["status"] = "removed"
        return httpx.Response(200, json=files)

    names = github(handler).pr_files("o/r", 7)
    assert pages == list(range(1, MAX_PR_FILE_PAGES + 1))
    assert len(names) == 99 * MAX_PR_FILE_PAGES and "p1-0" not in names


def test_file_at_reads_the_contents_at_a_ref(slept):
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.path == "/api/repos/o/r/contents/config/a/B.yaml"
        assert req.url.params["ref"] == "abc123"
        return httpx.Response(200, json={"content": base64.b64encode(b"repo_tag: v1\n").decode()})

    assert github(handler).file_at("o/r", "config/a/B.yaml", "abc123") == "repo_tag: v1\n"


def test_reads_try_once_and_fail_with_a_github_error_naming_the_fix(slept):
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(503 if "pulls" in req.url.path else 404, json={"message": "no"})

    client = github(handler)
    with pytest.raises(GitHubError, match="HTTP 503"):
        client.pr_files("o/r", 1)
    with pytest.raises(GitHubError, match="can the token of GitHubCredentials block") as failed:
        client.file_at("o/r", "config/a/B.yaml", "abc")
    assert len(seen) == 2 and slept == [] and TOKEN not in str(failed.value)


def test_a_commit_status_is_retried_on_5xx_but_not_on_4xx(slept):
    codes = iter([500, 201, 422])
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(next(codes), json={})

    client = github(handler)
    client.post_status("o/r", "a" * 40, "pending", "x" * 500, "ctx", "http://run")
    assert len(seen) == 2 and slept == [1.0]
    with pytest.raises(RequestFailed) as failed:
        client.post_status("o/r", "a" * 40, "success", "done", "ctx")
    assert failed.value.status == 422 and len(seen) == 3
    body = httpx.Response(200, content=seen[0].content).json()
    assert len(body["description"]) == 140 and body["target_url"] == "http://run"
