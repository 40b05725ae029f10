"""A real HTTP server standing in for the web app: it records what it receives.

The tests assert on its records; `stack start` runs one for a first try.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received: float = field(default_factory=time.monotonic)


@dataclass
class WebAppStub:
    token: str = "webapp-test-token"
    fail_next: int = 0  # answer 503 to this many requests before accepting
    requests: list[Recorded] = field(default_factory=list)
    log_path: str | None = None  # append each request as a JSON line

    def first_about(self, task_id: str, timeout: float) -> Recorded:
        """The first request about `task_id`, as soon as it arrives (benchmarks time it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.requests):
                if isinstance(request.body, dict) and request.body.get("task_id") == task_id:
                    return request
            time.sleep(0.01)
        raise TimeoutError(f"no request about task {task_id} within {timeout:g}s")

    def start(self, port: int = 0) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                stub.record(Recorded("PUT", self.path, dict(self.headers), body))
                if stub.fail_next > 0:
                    stub.fail_next -= 1
                    self.send_response(503)
                elif self.headers.get("Authorization") != f"Token {stub.token}":
                    self.send_response(401)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, request: Recorded) -> None:
        self.requests.append(request)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"path": request.path, "body": request.body}) + "\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 60) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.accepted(path)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"web app got {len(self.accepted(path))} PUT {path}, wanted {count}")


def main() -> None:
    """`python -m prefect_cs.testing.webapp_standin PORT LOGFILE`: a local web app for trying the platform."""
    import sys

    port, log = int(sys.argv[1]), sys.argv[2]
    stub = WebAppStub(token=sys.argv[3] if len(sys.argv) > 3 else "local-demo-token", log_path=log)
    stub.start(port)
    threading.Event().wait()


if __name__ == "__main__":
    main()
