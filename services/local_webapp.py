"""The local web app `stack start` runs when no web app is set: it accepts and records results.

Why it is part of the product: a first try (quickstart, `prefect-cs simulate`) needs
somewhere to deliver results before a Compute Studio web app exists. This one answers
as a web app would (PUT with the web app block's token: 200; a wrong token: 401;
anything but PUT: 405) and appends each request to a JSON-lines log, which shows
exactly what a real one would receive. It is started by module name:
`WEBAPP_STANDIN_TOKEN=… python -m prefect_cs.services.local_webapp PORT LOGFILE`.
The token comes from the environment, never argv: any local user (and model code)
can read a process's command line. The tests' recording stand-in
(testing/webapp_standin.py) answers by the same rule.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_ENV = "WEBAPP_STANDIN_TOKEN"  # set by services/stack_parts.py, which starts it
USAGE = "usage: WEBAPP_STANDIN_TOKEN=… python -m prefect_cs.services.local_webapp PORT LOGFILE"


def status_for(method: str, authorization: str | None, token: str) -> int:
    """How a web app answers a delivery: only a PUT with its token is accepted."""
    if method != "PUT":
        return 405
    if authorization != f"Token {token}":
        return 401
    return 200


def log_line(path: str, body: Any) -> str:
    """One request as the log keeps it: its path and its body (JSON, text or None)."""
    return json.dumps({"path": path, "body": body}) + "\n"


def parse_body(raw: bytes) -> Any:
    """JSON when it parses, else text; None when empty."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def handler_for(token: str, log: str) -> type[BaseHTTPRequestHandler]:
    """Records each request in `log`, then answers it by `status_for` with `{}`."""

    class Handler(BaseHTTPRequestHandler):
        def serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with open(log, "a") as f:
                f.write(log_line(self.path, parse_body(raw)))
            self.send_response(status_for(self.command, self.headers.get("Authorization"), token))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1:PORT until killed; the token from WEBAPP_STANDIN_TOKEN."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit(USAGE)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        sys.exit(f"set {TOKEN_ENV} to the token the web app block sends (never pass it on argv)")
    server = ThreadingHTTPServer(("127.0.0.1", int(args[0])), handler_for(token, args[1]))
    server.serve_forever(0.05)


if __name__ == "__main__":
    main()
