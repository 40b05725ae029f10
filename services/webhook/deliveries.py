"""At-most-once: the delivery ids and signed bodies the receiver has acted on, in SQLite.

Replays. The signature covers the body only, so a new `X-GitHub-Delivery`
on a captured body would pass; the receiver also remembers the sha256 of
every acted-on body for the retention period (`CS_WEBHOOK_RETENTION_DAYS`,
at most `CS_WEBHOOK_MAX_DELIVERIES` rows, oldest dropped first) and answers a
replayed body 202 `{"status": "ignored", "reason": "duplicate body …"}`, as
it answers GitHub's own redeliveries ("duplicate delivery"): a retry never
shows as an error. Real GitHub deliveries never repeat a body (a push names
`repository.pushed_at`, a pull request `updated_at`). The file is under
CS_HOME (0700 folder, 0600 file), so a restarted receiver still refuses replays;
it also remembers which model, tag and steps were requested, for
CS_WEBHOOK_REQUEST_WINDOW_SECONDS (a release that creates its tag also pushes it).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from prefect_cs.core.home import PRIVATE_FILE, private_folder
from prefect_cs.core.settings import get_settings


class DeliveryStore:
    """Delivery ids and body hashes already acted on, in SQLite so a restarted receiver still
    refuses replays; both kept for the retention period, at most `max_rows` of each."""

    def __init__(self, path: Path, retention_seconds: float, max_rows: int) -> None:
        private_folder(path.parent, get_settings().home)  # who pushed what, when: 0700
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))  # SQLite's -wal/-shm follow
        self.path, self.retention, self.max_rows = path, retention_seconds, max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (at)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS bodies"
            " (hash TEXT PRIMARY KEY, delivery TEXT NOT NULL, at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS bodies_at ON bodies (at)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._claims = 0
        self.prune()

    def seen(self, delivery: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery,)).fetchone()
        return row is not None

    def first_delivery_of(self, digest: str) -> str | None:
        """The delivery that was acted on with this body, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT delivery FROM bodies WHERE hash = ?", (digest,)
            ).fetchone()
        return row[0] if row else None

    def duplicate(self, delivery: str, digest: str | None) -> str | None:
        """Why this delivery was already acted on (its id, or its body under another id), or
        None."""
        if self.seen(delivery):
            return "duplicate delivery"
        first = self.first_delivery_of(digest) if digest else None
        if first is not None:
            return f"duplicate body: already acted on as delivery {first} (a replay)"
        return None

    def claim(self, delivery: str, digest: str | None = None) -> str | None:
        """Record the id and the body hash at once; None when both were new, else why not (atomic,
        so of two concurrent copies exactly one wins)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                reason = self._claim(delivery, digest, now)
                self._db.execute("COMMIT" if reason is None else "ROLLBACK")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._claims += 1
        if self._claims % 1000 == 0:
            self.prune()
        return reason

    def _claim(self, delivery: str, digest: str | None, now: float) -> str | None:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO deliveries (id, at) VALUES (?, ?)", (delivery, now)
        )
        if cursor.rowcount != 1:
            return "duplicate delivery"
        if digest is None:
            return None
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO bodies (hash, delivery, at) VALUES (?, ?, ?)",
            (digest, delivery, now),
        )
        if cursor.rowcount != 1:
            row = self._db.execute("SELECT delivery FROM bodies WHERE hash = ?", (digest,))
            return f"duplicate body: already acted on as delivery {row.fetchone()[0]} (a replay)"
        return None

    def fresh(self, keys: list[str], window: float) -> list[str]:
        """The keys not requested within `window` seconds, now recorded as requested."""
        if window <= 0:
            return keys
        now, fresh = time.time(), []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    row = self._db.execute(
                        "SELECT at FROM requests WHERE key = ?", (key,)
                    ).fetchone()
                    if row is None or row[0] < now - window:
                        self._db.execute(
                            "REPLACE INTO requests (key, at) VALUES (?, ?)", (key, now)
                        )
                        fresh.append(key)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return fresh

    def forget_requests(self, keys: Sequence[str]) -> None:
        """Un-record requests that were not sent after all (e.g. over the publish budget)."""
        with self._lock:
            self._db.executemany("DELETE FROM requests WHERE key = ?", [(k,) for k in keys])

    def release(self, delivery: str, keys: Sequence[str] = ()) -> None:
        """Forget a claim whose event could not be sent, so GitHub's redelivery is acted on."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery,))
            self._db.execute("DELETE FROM bodies WHERE delivery = ?", (delivery,))
            self._db.executemany("DELETE FROM requests WHERE key = ?", [(k,) for k in keys])

    def prune(self) -> None:
        """Bounded retention: drop rows older than the retention, then all but the newest
        max_rows ids and body hashes (what bounds the store when deliveries pour in)."""
        cutoff = time.time() - self.retention
        with self._lock:
            for table in ("deliveries", "bodies", "requests"):
                self._db.execute(f"DELETE FROM {table} WHERE at < ?", (cutoff,))  # noqa: S608
            self._db.execute(
                "DELETE FROM deliveries WHERE id NOT IN"
                " (SELECT id FROM deliveries ORDER BY at DESC LIMIT ?)",
                (self.max_rows,),
            )
            self._db.execute(
                "DELETE FROM bodies WHERE hash NOT IN"
                " (SELECT hash FROM bodies ORDER BY at DESC LIMIT ?)",
                (self.max_rows,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
