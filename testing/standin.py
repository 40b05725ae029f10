"""The one small HTTP server every stand-in (web app, GitHub, Secret Manager) is built on.

Why one base: the stand-ins replace remote services so tests exercise the
platform's real HTTP clients; what they share — a threaded server on a free
loopback port, start/stop/url, a record of every request, JSON replies — was
written three times. Here it is written once; each stand-in only says how it
answers (`answer`), and tests assert on the same `Recorded` records everywhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlparse

from prefect_cs.services.local_webapp import parse_body  # one rule for both recorders

Reply = tuple[int, Any]  # status, JSON body


@dataclass
class Recorded:
    """One request as the stand-in received it; `body` is parsed JSON, text, or None if empty."""

    method: str
    path: str  # as sent, query included
    headers: dict[str, str]
    body: Any
    received: float = field(default_factory=time.monotonic)
    status: int | None = None  # what the stand-in answered; None while it is being answered

    @property
    def route(self) -> str:
        """The path without its query string."""
        return urlparse(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlparse(self.path).query)


@dataclass
class StandIn:
    """A recording HTTP server on 127.0.0.1; subclasses implement `answer`.

    `start(port=0)` picks a free port and returns the stand-in, `url` is its
    base URL, `stop()` shuts it down, `requests` holds every request received
    (recorded before it is answered, through `record`, which subclasses may extend;
    each record's `status` is what it was answered).
    """

    requests: list[Recorded] = field(default_factory=list, kw_only=True)

    def answer(self, request: Recorded) -> Reply:
        return 404, {"message": "Not Found"}

    def record(self, request: Recorded) -> None:
        self.requests.append(request)

    def start(self, port: int = 0) -> Self:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(self))
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        """(method, route) of every request, in order."""
        return [(r.method, r.route) for r in self.requests]

    def wait_until(
        self, found: Callable[[], list[Recorded]], count: int = 1, timeout: float = 60
    ) -> list[Recorded]:
        """`found()` as soon as it holds `count` records, or what it holds at the timeout."""
        deadline = time.monotonic() + timeout
        while len(records := found()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return records


def handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    """A request handler that records each request on `standin` and sends its JSON answer."""

    class Handler(BaseHTTPRequestHandler):
        def serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Recorded(self.command, self.path, dict(self.headers), parse_body(raw))
            standin.record(request)
            status, body = standin.answer(request)
            request.status = status  # set before the reply leaves: a client that has it sees it
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
