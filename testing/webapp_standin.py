"""A real HTTP server standing in for the web app in tests: it records what it receives.

The tests assert on its records (and can make it answer 503 first, `fail_next`). It
answers by the same rule as the product's local web app, services/local_webapp.py,
which `stack start` runs when no web app is set; this one is test code only.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect_cs.services.local_webapp import status_for
from prefect_cs.testing.standin import Recorded, Reply, StandIn

__all__ = ["Recorded", "WebAppStub"]


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
