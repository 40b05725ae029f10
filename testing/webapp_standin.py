"""A real HTTP server standing in for the web app in tests: it records what it receives.

The tests assert on its records (and can make it answer 503 first, `fail_next`). It
answers by the same rule as the product's local web app, services/local_webapp.py,
which `stack start` runs when no web app is set; this one is test code only.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from prefect_cs.services.local_webapp import status_for
from prefect_cs.testing.standin import Recorded, Reply, StandIn

__all__ = ["OAuthWebAppStub", "Recorded", "WebAppStub"]


@dataclass
class WebAppStub(StandIn):
    token: str = "webapp-test-token"
    fail_next: int = 0  # answer 503 to this many requests before accepting

    def answer(self, request: Recorded) -> Reply:
        if request.method == "PUT" and self.fail_next > 0:
            self.fail_next -= 1
            return 503, {}
        return status_for(request.method, request.headers.get("Authorization"), self.token), {}

    def first_about(self, task_id: str, timeout: float) -> Recorded:
        """The first request about `task_id`, as soon as it arrives (benchmarks time it)."""
        found = self.wait_until(lambda: self.about(task_id)[:1], 1, timeout)
        if not found:
            raise TimeoutError(f"no request about task {task_id} within {timeout:g}s")
        return found[0]

    def about(self, task_id: str) -> list[Recorded]:
        return [
            r
            for r in list(self.requests)
            if isinstance(r.body, dict) and r.body.get("task_id") == task_id
        ]

    def received(self, path: str) -> list[Recorded]:
        """Every PUT to `path`, whatever it was answered (`fail_next`'s 503s, a wrong token's
        401s)."""
        return [r for r in list(self.requests) if r.method == "PUT" and r.path == path]

    def accepted(self, path: str) -> list[Recorded]:
        """The PUTs to `path` answered 2xx: what a real web app would have stored."""
        return [r for r in self.received(path) if r.status is not None and 200 <= r.status < 300]

    def only_put(self, task_id: str, path: str = "/outputs/api/") -> dict:
        """The body of the one PUT about `task_id` to `path`: sent exactly once, and accepted."""
        puts = [r for r in self.about(task_id) if r.method == "PUT" and r.path == path]
        if len(puts) != 1:
            raise AssertionError(f"expected exactly one PUT {path} for {task_id}, got {len(puts)}")
        if puts[0].status != 200:
            raise AssertionError(f"the PUT {path} for {task_id} was answered {puts[0].status}")
        return puts[0].body

    def wait_for(self, path: str, count: int = 1, timeout: float = 60) -> list[Recorded]:
        found = self.wait_until(lambda: self.accepted(path), count, timeout)
        if len(found) < count:
            raise AssertionError(f"web app got {len(found)} PUT {path}, wanted {count}")
        return found


@dataclass
class OAuthWebAppStub(WebAppStub):
    """A web app as C/S v1's was (django-oauth-toolkit): `POST /o/token/` with the client
    credentials of its OAuth application hands out bearer tokens (`expires_in` seconds);
    a PUT is accepted only with one of them. `revoke()` forgets them all, as a web app
    restarting with a fresh token table would."""

    client_id: str = "cluster-client"
    client_secret: str = "cluster-client-secret"
    expires_in: int = 36000
    issued: list[str] = field(default_factory=list)

    def answer(self, request: Recorded) -> Reply:
        if request.method == "POST" and request.route == "/o/token/":
            form = {k: v[0] for k, v in parse_qs(str(request.body or "")).items()}
            wanted = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
            if form != wanted:
                return 401, {"error": "invalid_client"}
            token = secrets.token_urlsafe(16)
            self.issued.append(token)
            reply = {"access_token": token, "expires_in": self.expires_in, "scope": "read write"}
            return 200, {**reply, "token_type": "Bearer"}
        if request.method == "PUT" and self.fail_next > 0:
            self.fail_next -= 1
            return 503, {}
        if request.method != "PUT":
            return 405, {}
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return (200 if bearer in self.issued else 401), {}

    def token_requests(self) -> list[Recorded]:
        return [r for r in list(self.requests) if r.method == "POST" and r.route == "/o/token/"]

    def revoke(self) -> None:
        self.issued.clear()
