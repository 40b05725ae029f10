"""How many failed logins `/api/v1/login/access-token` takes before it answers 429.

Why: a cluster user's password is the key to its web app's projects, and the
login route is the one v1 route anyone can call. Guessing is slowed per user
name (one name cannot be tried faster than its bucket refills) and per client
address (one client cannot try many names). Each is a token bucket: `burst`
failures at once, then one more every `window / burst` seconds, so a burst is
limited and the right user is never locked out for longer than that after the
last failure. A refused login answers 429 with `Retry-After` (whole seconds)
before the password is looked at. Only failures take tokens: a web app that logs
in correctly as often as it likes is never limited.

Memory is bounded: each kind keeps at most MAX_KEYS buckets; when full, buckets
that have refilled whole (no different from none) go first, then the least
recently used. The address is the connection's (`request.client`), never a
header a client could forge.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prefect_cs.core.settings import ApiSettings
from prefect_cs.services.api_v1.tenants import USERNAME_RE

MAX_KEYS = 10_000


@dataclass
class Bucket:
    tokens: float
    at: float


class Buckets:
    """Token buckets by key (a user name, or an address), at most `max_keys` of them."""

    def __init__(
        self,
        burst: int,
        window: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.rate, self.max_keys, self.clock = burst, burst / window, max_keys, clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def _now(self, key: str) -> Bucket:
        """The key's bucket refilled to now (a fresh full one when it has none)."""
        now = self.clock()
        bucket = self._buckets.get(key) or Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        return bucket

    def wait(self, key: str) -> float:
        """Seconds until the key may fail once more (0 when it may now)."""
        if key not in self._buckets:
            return 0.0
        tokens = self._now(key).tokens
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def fail(self, key: str) -> None:
        """Take one token for a failure, keeping the key as the most recently used."""
        bucket = self._now(key)
        bucket.tokens = max(0.0, bucket.tokens - 1)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        """Past max_keys: drop the buckets that are full again, then the oldest, down to 90%
        (so a flood of new keys scans the buckets once per tenth of them, not per key)."""
        if len(self._buckets) <= self.max_keys:
            return
        for key in [k for k in self._buckets if self._now(k).tokens >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys - self.max_keys // 10:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class LoginLimits:
    """Both limits of the login route, shared by its requests (one lock: each call is short)."""

    def __init__(self, settings: ApiSettings) -> None:
        window = settings.login_failure_window
        self.users = Buckets(settings.login_failures_per_user, window)
        self.addresses = Buckets(settings.login_failures_per_address, window)
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> int:
        """Whole seconds to wait before this name may be tried from this address (0: now)."""
        with self._lock:
            wait = self.addresses.wait(address)
            if USERNAME_RE.fullmatch(username):
                wait = max(wait, self.users.wait(username))
        return math.ceil(wait)

    def failed(self, username: str, address: str) -> None:
        """A failure counts against the address, and against the name when it could be a
        user's (a name that can never log in needs no bucket: its address pays)."""
        with self._lock:
            self.addresses.fail(address)
            if USERNAME_RE.fullmatch(username):
                self.users.fail(username)
