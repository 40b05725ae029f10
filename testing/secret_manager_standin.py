"""A local HTTP server speaking the part of Google Secret Manager's v1 REST API the backend uses.

The real `google-cloud-secret-manager` client talks to it over its REST
transport (CS_GCP_SECRETS_ENDPOINT=http://127.0.0.1:PORT), so the test runs the
client library's own request building, JSON mapping and error translation;
only Google's servers are replaced. Every request is recorded.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

SECRET_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$")
LIST_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets$")
ADD_VERSION = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+):addVersion$")
ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/latest:access$")


class SecretManagerStandIn:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> SecretManagerStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- the API -----------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        if method == "POST" and (m := LIST_PATH.match(path)):
            name = f"projects/{m[1]}/secrets/{query['secretId'][0]}"
            if name in self.secrets:
                return error(409, "ALREADY_EXISTS", f"Secret [{name}] already exists.")
            self.secrets[name] = {**body, "name": name}
            self.versions[name] = []
            return 200, self.secrets[name]
        if method == "GET" and (m := LIST_PATH.match(path)):
            wanted = parse_filter(query.get("filter", [""])[0])
            found = [
                s
                for n, s in sorted(self.secrets.items())
                if n.startswith(f"projects/{m[1]}/")
                and all(s.get("labels", {}).get(k) == v for k, v in wanted.items())
            ]
            return 200, {"secrets": found, "totalSize": len(found)}
        if method == "POST" and (m := ADD_VERSION.match(path)):
            name = f"projects/{m[1]}/secrets/{m[2]}"
            if name not in self.secrets:
                return error(404, "NOT_FOUND", f"Secret [{name}] not found.")
            version = {"name": f"{name}/versions/{len(self.versions[name]) + 1}", **body}
            self.versions[name].append(version)
            return 200, {"name": version["name"], "state": "ENABLED"}
        if method == "GET" and (m := ACCESS.match(path)):
            name = f"projects/{m[1]}/secrets/{m[2]}"
            if not self.versions.get(name):
                return error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
            latest = self.versions[name][-1]
            return 200, {"name": latest["name"], "payload": latest["payload"]}
        if method == "DELETE" and (m := SECRET_PATH.match(path)):
            name = f"projects/{m[1]}/secrets/{m[2]}"
            if self.secrets.pop(name, None) is None:
                return error(404, "NOT_FOUND", f"Secret [{name}] not found.")
            self.versions.pop(name, None)
            return 200, {}
        return error(404, "NOT_FOUND", f"no route {method} {path}")

    def stored_value(self, ident: str, project: str) -> str:
        payload = self.versions[f"projects/{project}/secrets/{ident}"][-1]["payload"]
        return base64.b64decode(payload["data"]).decode()

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                standin.requests.append((self.command, url.path))
                status, reply = standin.handle(self.command, url.path, parse_qs(url.query), body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def error(code: int, status: str, message: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "status": status}}


def parse_filter(text: str) -> dict[str, str]:
    """`labels.k=v AND labels.k2=v2` → {k: v, k2: v2} (all the backend sends)."""
    pairs = [p.strip() for p in text.split(" AND ") if p.strip()]
    return dict(p.removeprefix("labels.").split("=", 1) for p in pairs)
