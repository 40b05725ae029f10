"""A local HTTP server speaking the part of Google Secret Manager's v1 REST API the backend uses.

The real `google-cloud-secret-manager` client talks to it over its REST
transport (CS_GCP_SECRETS_ENDPOINT=http://127.0.0.1:PORT), so the test runs the
client library's own request building, JSON mapping and error translation;
only Google's servers are replaced. Every request is recorded.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from prefect_cs.testing.standin import Recorded, Reply, StandIn

SECRET_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$")
LIST_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets$")
ADD_VERSION = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+):addVersion$")
ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/latest:access$")


@dataclass
class SecretManagerStandIn(StandIn):
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def answer(self, request: Recorded) -> Reply:
        method, path, query = request.method, request.route, request.query
        body = request.body if isinstance(request.body, dict) else {}
        if method == "POST" and (m := LIST_PATH.match(path)):
            return self.create(f"projects/{m[1]}/secrets/{query['secretId'][0]}", body)
        if method == "GET" and (m := LIST_PATH.match(path)):
            return self.list_secrets(m[1], parse_filter(query.get("filter", [""])[0]))
        if method == "POST" and (m := ADD_VERSION.match(path)):
            return self.add_version(f"projects/{m[1]}/secrets/{m[2]}", body)
        if method == "GET" and (m := ACCESS.match(path)):
            return self.access(f"projects/{m[1]}/secrets/{m[2]}")
        if method == "DELETE" and (m := SECRET_PATH.match(path)):
            return self.delete(f"projects/{m[1]}/secrets/{m[2]}")
        return error(404, "NOT_FOUND", f"no route {method} {path}")

    def create(self, name: str, body: dict) -> Reply:
        if name in self.secrets:
            return error(409, "ALREADY_EXISTS", f"Secret [{name}] already exists.")
        self.secrets[name] = {**body, "name": name}
        self.versions[name] = []
        return 200, self.secrets[name]

    def list_secrets(self, project: str, labels: dict[str, str]) -> Reply:
        found = [
            s
            for n, s in sorted(self.secrets.items())
            if n.startswith(f"projects/{project}/")
            and all(s.get("labels", {}).get(k) == v for k, v in labels.items())
        ]
        return 200, {"secrets": found, "totalSize": len(found)}

    def add_version(self, name: str, body: dict) -> Reply:
        if name not in self.secrets:
            return error(404, "NOT_FOUND", f"Secret [{name}] not found.")
        version = {"name": f"{name}/versions/{len(self.versions[name]) + 1}", **body}
        self.versions[name].append(version)
        return 200, {"name": version["name"], "state": "ENABLED"}

    def access(self, name: str) -> Reply:
        if not self.versions.get(name):
            return error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
        latest = self.versions[name][-1]
        return 200, {"name": latest["name"], "payload": latest["payload"]}

    def delete(self, name: str) -> Reply:
        if self.secrets.pop(name, None) is None:
            return error(404, "NOT_FOUND", f"Secret [{name}] not found.")
        self.versions.pop(name, None)
        return 200, {}

    def stored_value(self, ident: str, project: str) -> str:
        payload = self.versions[f"projects/{project}/secrets/{ident}"][-1]["payload"]
        return base64.b64decode(payload["data"]).decode()


def error(code: int, status: str, message: str) -> Reply:
    return code, {"error": {"code": code, "message": message, "status": status}}


def parse_filter(text: str) -> dict[str, str]:
    """`labels.k=v AND labels.k2=v2` → {k: v, k2: v2} (all the backend sends)."""
    pairs = [p.strip() for p in text.split(" AND ") if p.strip()]
    return dict(p.removeprefix("labels.").split("=", 1) for p in pairs)
