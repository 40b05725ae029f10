"""What the v1 API records: its cluster users (web apps), whose project is whose, its builds.

Why a database of its own: C/S's web app keeps the cluster's integer ids (a
project's `id`, a build's `cluster_build_id` is an IntegerField), and every v1
answer is scoped to the user that asks, so "whose is this" must be one indexed
lookup, never a scan of the model registry. SQLite in `$CS_HOME/api/v1.sqlite3`
(folder 0700, file 0600) beside the API's pending requests; no secret is stored
here: passwords live in the cluster's secrets store (services/api_v1/tenants.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_cs.core.home import PRIVATE_FILE

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    webapp TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (owner, title)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    data TEXT NOT NULL
);
"""


USER_COLUMNS = {  # added to a store made before /api/v1/users/ existed
    "email": "TEXT",
    "url": "TEXT",
    "is_superuser": "INTEGER NOT NULL DEFAULT 0",
    "is_approved": "INTEGER NOT NULL DEFAULT 1",
}


@dataclass(frozen=True)
class ClusterUser:
    """A web app that logs in to this cluster; `webapp` is the block its results go to ("" for
    a superuser, which only manages users); C/S's email and url; approved to use its web
    app's routes (users created through POST /api/v1/users/ start unapproved)."""

    id: int
    username: str
    webapp: str
    email: str | None = None
    url: str | None = None
    is_superuser: bool = False
    is_approved: bool = True


def user_of(row: sqlite3.Row | None) -> ClusterUser | None:
    if row is None:
        return None
    return ClusterUser(
        row["id"], row["username"], row["webapp"], row["email"], row["url"],
        bool(row["is_superuser"]), bool(row["is_approved"]),
    )  # fmt: skip


def now() -> str:
    """An aware UTC timestamp in ISO form: what C/S's pydantic schemas sent, and what
    `datetime.fromisoformat` (the web app's parser) reads."""
    return datetime.now(UTC).isoformat()


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
        with self.db() as db:
            db.executescript(SCHEMA)
            have = {row["name"] for row in db.execute("PRAGMA table_info(users)")}
            for column, kind in USER_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE users ADD COLUMN {column} {kind}")

    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """One connection per call, committed on success (threads of the API share the file)."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            db.row_factory = sqlite3.Row
            yield db

    # ---- users ---------------------------------------------------------------------------

    def save_user(
        self, username: str, webapp: str, url: str | None = None, superuser: bool = False
    ) -> ClusterUser:
        """Add or update a user the operator made (approved)."""
        with self.db() as db:
            db.execute(
                "INSERT INTO users (username, webapp, url, is_superuser, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET"
                " webapp = excluded.webapp, url = excluded.url,"
                " is_superuser = excluded.is_superuser",
                (username, webapp, url, int(superuser), now()),
            )
        found = self.user_named(username)
        assert found is not None
        return found

    def insert_user(self, username: str, webapp: str, url: str, email: str) -> ClusterUser | None:
        """A new, unapproved user; None when the name is taken (one atomic INSERT)."""
        try:
            with self.db() as db:
                db.execute(
                    "INSERT INTO users (username, webapp, url, email, is_approved, created_at)"
                    " VALUES (?, ?, ?, ?, 0, ?)",
                    (username, webapp, url, email, now()),
                )
        except sqlite3.IntegrityError:
            return None
        return self.user_named(username)

    def set_approved(self, username: str, approved: bool) -> ClusterUser | None:
        with self.db() as db:
            db.execute(
                "UPDATE users SET is_approved = ? WHERE username = ?", (int(approved), username)
            )
        return self.user_named(username)

    def user_named(self, username: str) -> ClusterUser | None:
        with self.db() as db:
            return user_of(
                db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
            )

    def user(self, user_id: int) -> ClusterUser | None:
        with self.db() as db:
            return user_of(db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())

    def users(self) -> list[ClusterUser]:
        with self.db() as db:
            rows = db.execute("SELECT * FROM users ORDER BY id").fetchall()
        return [u for r in rows if (u := user_of(r))]

    def delete_user(self, username: str) -> bool:
        with self.db() as db:
            return db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0

    # ---- projects ------------------------------------------------------------------------

    def owner_of(self, owner: str, title: str) -> int | None:
        """The id of the user whose project OWNER/TITLE is, or None."""
        with self.db() as db:
            row = db.execute(
                "SELECT user_id FROM projects WHERE owner = ? AND title = ?", (owner, title)
            ).fetchone()
        return row["user_id"] if row else None

    def save_projects(self, user_id: int, projects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upsert a user's projects in one transaction; each with its `id`."""
        with self.db() as db:
            for project in projects:
                db.execute(
                    "INSERT INTO projects (user_id, owner, title, data) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (owner, title) DO UPDATE SET data = excluded.data"
                    " WHERE projects.user_id = excluded.user_id",
                    (user_id, project["owner"], project["title"], json.dumps(project)),
                )
        return [self.project(user_id, p["owner"], p["title"]) or {} for p in projects]

    def project(self, user_id: int, owner: str, title: str) -> dict[str, Any] | None:
        """The user's project OWNER/TITLE with its id; None when it is not the user's."""
        with self.db() as db:
            row = db.execute(
                "SELECT * FROM projects WHERE user_id = ? AND owner = ? AND title = ?",
                (user_id, owner, title),
            ).fetchone()
        return {**json.loads(row["data"]), "id": row["id"]} if row else None

    def projects(self, user_id: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many the user has, one page of them in id order)."""
        with self.db() as db:
            count = db.execute(
                "SELECT COUNT(*) FROM projects WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            rows = db.execute(
                "SELECT * FROM projects WHERE user_id = ? ORDER BY id LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            ).fetchall()
        return count, [{**json.loads(r["data"]), "id": r["id"]} for r in rows]

    # ---- jobs ----------------------------------------------------------------------------

    def save_job(self, user_id: int, job: dict[str, Any]) -> bool:
        """Record a job as its user's; False when its id is already another user's job."""
        with self.db() as db:
            db.execute(
                "INSERT INTO jobs (id, user_id, data) VALUES (?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET data = excluded.data WHERE jobs.user_id = excluded.user_id",
                (job["id"], user_id, json.dumps(job)),
            )
            row = db.execute("SELECT user_id FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        return row["user_id"] == user_id

    def job(self, user_id: int, job_id: str) -> dict[str, Any] | None:
        """The user's job, None when it is not theirs."""
        with self.db() as db:
            row = db.execute(
                "SELECT data FROM jobs WHERE id = ? AND user_id = ?", (job_id, user_id)
            ).fetchone()
        return json.loads(row["data"]) if row else None

    # ---- builds --------------------------------------------------------------------------

    def new_build(self, user_id: int, project_id: int, data: dict[str, Any]) -> int:
        with self.db() as db:
            cursor = db.execute(
                "INSERT INTO builds (user_id, project_id, data) VALUES (?, ?, ?)",
                (user_id, project_id, json.dumps(data)),
            )
        return int(cursor.lastrowid or 0)

    def build(self, user_id: int, build_id: int) -> dict[str, Any] | None:
        """The user's build, None when it is not theirs."""
        with self.db() as db:
            row = db.execute(
                "SELECT * FROM builds WHERE id = ? AND user_id = ?", (build_id, user_id)
            ).fetchone()
        return {**json.loads(row["data"]), "id": row["id"]} if row else None

    def update_build(self, build_id: int, data: dict[str, Any]) -> None:
        """Save a build; `notified` never goes back to false (a process that read the build
        before another claimed its notice must not undo the claim: claim_notice)."""
        with self.db() as db:
            db.execute(
                "UPDATE builds SET data = json_set(:new, '$.notified', json(CASE WHEN"
                " COALESCE(json_extract(data, '$.notified'), 0)"
                " OR COALESCE(json_extract(:new, '$.notified'), 0)"
                " THEN 'true' ELSE 'false' END)) WHERE id = :id",
                {"new": json.dumps(data), "id": build_id},
            )

    def claim_notice(self, build_id: int) -> bool:
        """True for the one caller that marks the build notified (atomic in SQLite): the one
        that then sends build_done, whichever API process, or how many, watch it."""
        with self.db() as db:
            cursor = db.execute(
                "UPDATE builds SET data = json_set(data, '$.notified', json('true'))"
                " WHERE id = ? AND NOT COALESCE(json_extract(data, '$.notified'), 0)",
                (build_id,),
            )
        return cursor.rowcount == 1

    def unnotified_builds(self, limit: int) -> list[tuple[int, int]]:
        """(user id, build id) of the newest `limit` builds whose web app was not told yet."""
        with self.db() as db:
            rows = db.execute(
                "SELECT user_id, id FROM builds"
                " WHERE NOT COALESCE(json_extract(data, '$.notified'), 0)"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r["user_id"], r["id"]) for r in rows]
