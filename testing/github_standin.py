"""A real HTTP server standing in for the GitHub API: it records every request.

It answers the calls the platform makes — a pull request itself (whether and
where it was merged), its files, a file's contents at a commit, and a commit
status — so tests and benchmarks
exercise the real HTTP path without GitHub. `hang()` makes it a GitHub that
accepts every connection and request and never answers (until `answer_again()`
or `stop()`): what the platform's timeouts are for.
"""

from __future__ import annotations

import base64
import re
import sys
import threading
from dataclasses import dataclass, field

from prefect_cs.testing.standin import Recorded, Reply, StandIn

PULL = re.compile(r"^/repos/([^/]+/[^/]+)/pulls/(\d+)$")
PR_FILES = re.compile(r"^/repos/([^/]+/[^/]+)/pulls/(\d+)/files$")
CONTENTS = re.compile(r"^/repos/([^/]+/[^/]+)/contents/(.+)$")
STATUSES = re.compile(r"^/repos/([^/]+/[^/]+)/statuses/([0-9a-fA-F]+)$")
NOT_FOUND: Reply = (404, {"message": "Not Found"})
HOLD_SECONDS = 120  # how long hang() holds a request at most


@dataclass
class GitHubStandIn(StandIn):
    token: str = "github-test-token"
    pr_files: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    contents: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (repo, path, ref)
    pulls: dict[tuple[str, int], dict] = field(default_factory=dict)  # GitHub's pull request JSON
    status_code: int = 201  # what POST /statuses answers (e.g. 500 to test failures)
    answering: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self.answering.set()

    def hang(self) -> None:
        """From now on, requests are received (and recorded) but never answered."""
        self.answering.clear()

    def answer_again(self) -> None:
        """Answer held requests and every later one."""
        self.answering.set()

    def start(self, port: int = 0) -> GitHubStandIn:
        super().start(port)
        quiet = self.server.handle_error

        def handle_error(request: object, address: object) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a held answer's client left
                quiet(request, address)

        self.server.handle_error = handle_error  # type: ignore[method-assign]
        return self

    def stop(self) -> None:
        self.answer_again()  # held handler threads finish instead of outliving the server
        super().stop()

    def answer(self, request: Recorded) -> Reply:
        # held, but not forever: a client without a timeout then shows as a slow test, not a
        # hung one
        self.answering.wait(HOLD_SECONDS)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}
        if request.method == "GET" and (m := PULL.match(request.route)):
            found = self.pulls.get((m[1], int(m[2])))
            return (200, found) if found is not None else NOT_FOUND
        if request.method == "GET" and (m := PR_FILES.match(request.route)):
            return self.files_page(m[1], int(m[2]), int(request.query.get("page", ["1"])[0]))
        if request.method == "GET" and (m := CONTENTS.match(request.route)):
            return self.file_at(m[1], m[2], request.query.get("ref", [""])[0])
        if request.method == "POST" and STATUSES.match(request.route):
            body = request.body if isinstance(request.body, dict) else {}
            return self.status_code, {"state": body.get("state")}
        return NOT_FOUND

    def merge(self, repo: str, number: int, head: str, merge: str) -> None:
        """Record the pull request as merged at `merge`, as GitHub would answer for it."""
        self.pulls[(repo, number)] = {
            "number": number,
            "state": "closed",
            "merged": True,
            "merge_commit_sha": merge,
            "head": {"sha": head},
        }

    def files_page(self, repo: str, number: int, page: int) -> Reply:
        files = self.pr_files.get((repo, number))
        if files is None:
            return NOT_FOUND
        batch = files[(page - 1) * 100 : page * 100]
        return 200, [{"filename": f, "status": "modified"} for f in batch]

    def file_at(self, repo: str, path: str, ref: str) -> Reply:
        text = self.contents.get((repo, path, ref))
        if text is None:
            return NOT_FOUND
        return 200, {"encoding": "base64", "content": base64.b64encode(text.encode()).decode()}

    def statuses(self, sha: str | None = None) -> list[Recorded]:
        return [
            r
            for r in list(self.requests)
            if r.method == "POST"
            and "/statuses/" in r.path
            and (sha is None or r.path.endswith(sha))
        ]
