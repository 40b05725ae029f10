"""The retrying HTTP helper and the GitHub client against real loopback HTTP servers.

What each caller relies on: how many tries, how long between them, which
answers are tried again, and an error that names the URL and the last status
but never a header or a token. Every request goes over a socket to a
`StandIn` (testing/standin.py) that answers from a script and records what it
received; a connection error is a port nothing listens on. Only the waits
between tries are replaced (`http.time.sleep` records its delays), so no test
sleeps through its backoff.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prefect_cs.core import http
from prefect_cs.core.github import MAX_PR_FILE_PAGES, GitHubClient, GitHubError
from prefect_cs.core.http import RequestFailed, Retry, request
from prefect_cs.testing.scratch import free_port
from prefect_cs.testing.standin import Recorded, Reply, StandIn

TOKEN = "secret-token-value"
PATH = "/api/thing"


@dataclass
class Scripted(StandIn):
    """Answers with `replies` in order, the last one repeating; a bare status gets {"ok": …}.

    `hold` seconds pass before each answer (a thread wait: `time.sleep` may be
    the test's recorder), to make a client's timeout run out.
    """

    replies: list[int | Reply] = field(default_factory=lambda: [200])
    hold: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)

    def answer(self, request: Recorded) -> Reply:
        self.released.wait(self.hold)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return (reply, {"ok": reply < 300}) if isinstance(reply, int) else reply

    def stop(self) -> None:
        self.released.set()  # a held answer goes out now, so shutdown does not wait on it
        super().stop()


@dataclass
class PullRequestFiles(StandIn):
    """Every page of a pull request's files is full: 100 files, the first of them removed."""

    def answer(self, request: Recorded) -> Reply:
        page = int(request.query["page"][0])
        files = [{"filename": f"p{page}-{i}", "status": "modified"} for i in range(100)]
        files[0]["status"] = "removed"
        return 200, files


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    delays: list[float] = []
    monkeypatch.setattr(http.time, "sleep", delays.append)
    return delays


@pytest.fixture
def serve() -> Iterator[Callable[..., StandIn]]:
    """Starts stand-ins (`serve(*replies)` a `Scripted` one) and stops them after the test."""
    started: list[StandIn] = []

    def start(*replies: int | Reply, standin: StandIn | None = None, hold: float = 0.0):
        standin = standin or Scripted(list(replies), hold)
        started.append(standin.start())
        return standin

    yield start
    for standin in started:
        standin.stop()


def call(retry: Retry, url: str) -> httpx.Response:
    with httpx.Client() as client:
        return request(
            "PUT", url, retry, client=client, headers={"Authorization": f"Token {TOKEN}"}
        )


def test_5xx_and_429_are_retried_with_exponential_backoff(slept, serve):
    server = serve(503, 429, 500, 200)
    assert call(Retry(attempts=5, backoff=0.5), server.url + PATH).status_code == 200
    assert server.calls() == [("PUT", PATH)] * 4 and slept == [0.5, 1.0, 2.0]


def test_backoff_is_capped(slept, serve):
    server = serve(500)
    with pytest.raises(RequestFailed):
        call(Retry(attempts=6, backoff=1.0, max_delay=3.0), server.url + PATH)
    assert slept == [1.0, 2.0, 3.0, 3.0, 3.0] and len(server.requests) == 6


def test_other_4xx_is_not_retried_and_the_error_names_url_and_status_not_the_token(slept, serve):
    server = serve(404)
    url = server.url + PATH
    with pytest.raises(RequestFailed) as failed:
        call(Retry(attempts=5), url)
    assert len(server.requests) == 1 and slept == []
    assert server.requests[0].headers["Authorization"] == f"Token {TOKEN}"  # it was sent
    error = failed.value
    assert (error.status, error.attempts, error.url) == (404, 1, url)
    assert str(error).startswith(f"PUT {url} failed after 1 attempt(s): HTTP 404")
    assert TOKEN not in str(error)


def test_attempts_are_bounded_and_connection_errors_are_retried(slept):
    nobody = f"http://127.0.0.1:{free_port()}{PATH}"
    with pytest.raises(RequestFailed) as failed:
        call(Retry(attempts=3), nobody)
    assert failed.value.attempts == 3 and slept == [1.0, 2.0]  # three tries, two waits
    assert failed.value.status is None
    assert "ConnectError:" in str(failed.value) and "Connection refused" in str(failed.value)


def test_each_attempt_gets_the_timeout(slept, serve):
    # The server cannot see the client's timeout, so it makes each one run out: it
    # holds every answer 30 s (past httpx's own 5 s default); each try gives up after 0.2 s.
    server = serve(200, hold=30.0)
    started = time.monotonic()
    with pytest.raises(RequestFailed) as failed:
        call(Retry(attempts=2, timeout=0.2), server.url + PATH)
    assert time.monotonic() - started < 2.0
    assert len(server.requests) == 2 and failed.value.status is None
    assert "ReadTimeout" in str(failed.value)


def test_the_policy_decides_which_statuses_are_retried(slept, serve):
    webapp_like = Retry(attempts=3, retry_on={408, 503}.__contains__)
    server = serve(408, 501)
    with pytest.raises(RequestFailed) as failed:
        call(webapp_like, server.url + PATH)
    assert len(server.requests) == 2 and failed.value.status == 501


def test_userinfo_never_reaches_the_message(slept, serve):
    server = serve(500)
    host = server.url.removeprefix("http://")
    with pytest.raises(RequestFailed) as failed:
        call(Retry(attempts=1), f"http://user:{TOKEN}@{host}/x")
    assert TOKEN not in str(failed.value) and f"http://{host}/x" in str(failed.value)


# ---- the GitHub client ----------------------------------------------------------------


def github(server: StandIn) -> GitHubClient:
    return GitHubClient(
        server.url + "/api/",
        TOKEN,
        writes=Retry(attempts=2, backoff=1.0, max_delay=2.0, timeout=5.0),
    )


def test_pr_files_are_paginated_bounded_and_skip_removed_files(slept, serve):
    server = serve(standin=PullRequestFiles())
    with github(server) as client:
        names = client.pr_files("o/r", 7)
    assert {r.route for r in server.requests} == {"/api/repos/o/r/pulls/7/files"}
    assert {r.headers["Authorization"] for r in server.requests} == {f"Bearer {TOKEN}"}
    pages = [int(r.query["page"][0]) for r in server.requests]
    assert pages == list(range(1, MAX_PR_FILE_PAGES + 1))
    assert len(names) == 99 * MAX_PR_FILE_PAGES and "p1-0" not in names


def test_file_at_reads_the_contents_at_a_ref(slept, serve):
    server = serve((200, {"content": base64.b64encode(b"repo_tag: v1\n").decode()}))
    with github(server) as client:
        assert client.file_at("o/r", "config/a/B.yaml", "abc123") == "repo_tag: v1\n"
    (read,) = server.requests
    assert read.route == "/api/repos/o/r/contents/config/a/B.yaml"
    assert read.query["ref"] == ["abc123"]


def test_reads_try_once_and_fail_with_a_github_error_naming_the_fix(slept, serve):
    server = serve((503, {"message": "no"}), (404, {"message": "no"}))
    with github(server) as client:
        with pytest.raises(GitHubError, match="HTTP 503"):
            client.pr_files("o/r", 1)
        with pytest.raises(GitHubError, match="can the token of GitHubCredentials block") as failed:
            client.file_at("o/r", "config/a/B.yaml", "abc")
    assert [route for _, route in server.calls()] == [
        "/api/repos/o/r/pulls/1/files",
        "/api/repos/o/r/contents/config/a/B.yaml",
    ]
    assert slept == [] and TOKEN not in str(failed.value)


def test_a_commit_status_is_retried_on_5xx_but_not_on_4xx(slept, serve):
    server = serve((500, {}), (201, {}), (422, {}))
    with github(server) as client:
        client.post_status("o/r", "a" * 40, "pending", "x" * 500, "ctx", "http://run")
        assert len(server.requests) == 2 and slept == [1.0]
        with pytest.raises(RequestFailed) as failed:
            client.post_status("o/r", "a" * 40, "success", "done", "ctx")
    assert failed.value.status == 422 and len(server.requests) == 3
    assert server.calls()[0] == ("POST", f"/api/repos/o/r/statuses/{'a' * 40}")
    body = server.requests[0].body
    assert len(body["description"]) == 140 and body["target_url"] == "http://run"
