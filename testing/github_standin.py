"""A real HTTP server standing in for the GitHub API: it records every request.

It answers the three calls the platform makes — a pull request's files, a
file's contents at a commit, and a commit status — so tests and benchmarks
exercise the real HTTP path without GitHub.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prefect_cs.testing.webapp_standin import Recorded

PR_FILES = re.compile(r"^/repos/([^/]+/[^/]+)/pulls/(\d+)/files$")
CONTENTS = re.compile(r"^/repos/([^/]+/[^/]+)/contents/(.+)$")
STATUSES = re.compile(r"^/repos/([^/]+/[^/]+)/statuses/([0-9a-fA-F]+)$")


@dataclass
class GitHubStandIn:
    token: str = "github-test-token"
    pr_files: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    contents: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (repo, path, ref)
    status_code: int = 201  # what POST /statuses answers (e.g. 500 to test failures)
    requests: list[Recorded] = field(default_factory=list)

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                standin.record(self, None)
                if not self._authorized():
                    return self._send(401, {"message": "Bad credentials"})
                url = urlparse(self.path)
                if m := PR_FILES.match(url.path):
                    files = standin.pr_files.get((m[1], int(m[2])))
                    page = int(parse_qs(url.query).get("page", ["1"])[0])
                    if files is None:
                        return self._send(404, {"message": "Not Found"})
                    batch = files[(page - 1) * 100 : page * 100]
                    return self._send(200, [{"filename": f, "status": "modified"} for f in batch])
                if m := CONTENTS.match(url.path):
                    ref = parse_qs(url.query).get("ref", [""])[0]
                    text = standin.contents.get((m[1], m[2], ref))
                    if text is None:
                        return self._send(404, {"message": "Not Found"})
                    encoded = base64.b64encode(text.encode()).decode()
                    return self._send(200, {"encoding": "base64", "content": encoded})
                self._send(404, {"message": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                standin.record(self, body)
                if not self._authorized():
                    return self._send(401, {"message": "Bad credentials"})
                if STATUSES.match(urlparse(self.path).path):
                    return self._send(standin.status_code, {"state": body.get("state")})
                self._send(404, {"message": "Not Found"})

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {standin.token}"

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        self.requests.append(Recorded(handler.command, handler.path, dict(handler.headers), body))

    def statuses(self, sha: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and "/statuses/" in r.path
            and (sha is None or r.path.endswith(sha))
        ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
