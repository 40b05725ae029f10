"""The GitHub webhook receiver: signed deliveries in, `cs.publish.requested` events out.

It only decides *what* to publish and says so with a Prefect event; the
publish deployment's trigger (deployments/triggers.py) starts the run.
Order of checks, cheapest and safest first: body size (413), signature (401,
nothing else happens), headers and JSON (400), then the event's meaning
(202 with a reason when it asks for nothing), then at-most-once per
`X-GitHub-Delivery` (a SQLite file under CS_HOME, so restarts remember).

Mapping:
- `push` of `refs/tags/T` or `release` published in a model's repository
  → publish that model (found by repository URL in the registry) at T;
- `pull_request` opened/synchronize/reopened in the publish repository
  touching `config/OWNER/TITLE.yaml` → steps="stage" at the tag the PR's file names;
- that pull request closed with merged=true → steps="promote".
GitHub does not put a PR's changed files in the payload: they are read from
`{CS_GITHUB_API_URL}/repos/{repo}/pulls/{n}/files`, and the file itself from
`/contents/{path}?ref={sha}` (the stand-in in tests, api.github.com otherwise),
through `prefect_cs.core.github.GitHubClient`; when GitHub cannot answer, the
delivery gets 502 and is not remembered, so GitHub's redelivery is the retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import anyio
import yaml
from prefect_cs.core.errors import NotConfigured
from prefect_cs.core.github import GitHubClient, GitHubError
from prefect_cs.core.settings import WebhookSettings, get_settings
from prefect_cs.deployments.triggers import PublishRequest, emit_publish_requested
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.webhook")
T = TypeVar("T")

CONFIG_PATH_RE = re.compile(r"^config/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})\.ya?ml$")
DELIVERY_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
PR_STAGE_ACTIONS = {"opened", "synchronize", "reopened"}


# ---- signature ------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """GitHub's `X-Hub-Signature-256` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time comparison; a missing header is simply wrong."""
    if not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


# ---- at-most-once per delivery -------------------------------------------------------


class DeliveryStore:
    """Delivery ids already acted on, in SQLite so a restarted receiver still refuses replays."""

    def __init__(self, path: Path, retention_seconds: float, max_rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._claims = 0
        self.prune()

    def seen(self, delivery: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery,)).fetchone()
        return row is not None

    def claim(self, delivery: str) -> bool:
        """Record the id; False when it was already there (atomic, so concurrent replays lose)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (id, at) VALUES (?, ?)", (delivery, time.time())
            )
            self._claims += 1
        if self._claims % 1000 == 0:
            self.prune()
        return cursor.rowcount == 1

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

    def release(self, delivery: str, keys: Sequence[str] = ()) -> None:
        """Forget a claim whose event could not be sent, so GitHub's redelivery is acted on."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery,))
            self._db.executemany("DELETE FROM requests WHERE key = ?", [(k,) for k in keys])

    def prune(self) -> None:
        """Bounded retention: drop ids older than the retention, then all but the newest max_rows."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE at < ?", (time.time() - self.retention,))
            self._db.execute("DELETE FROM requests WHERE at < ?", (time.time() - self.retention,))
            self._db.execute(
                "DELETE FROM deliveries WHERE id NOT IN"
                " (SELECT id FROM deliveries ORDER BY at DESC LIMIT ?)",
                (self.max_rows,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---- which model a repository is ----------------------------------------------------


def normalize_repo_url(url: str) -> str:
    """host/owner/name, lowercase: https, ssh (git@host:o/n), git:// and .git forms compare equal."""
    url = url.strip()
    scp = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)
    if scp:
        host, path = scp.groups()
    else:
        parsed = urlparse(url if "://" in url else f"https://{url}")
        host, path = parsed.hostname or "", parsed.path
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host}/{path}".lower()


def repository_urls(repository: dict[str, Any]) -> set[str]:
    keys = ("clone_url", "ssh_url", "html_url", "git_url", "svn_url", "url")
    return {normalize_repo_url(v) for k in keys if isinstance(v := repository.get(k), str) and v}


class ModelIndex:
    """Registered models by normalized repo URL, cached briefly; a miss refreshes (rate-limited)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._by_url: dict[str, list[tuple[str, str]]] = {}
        self._loaded = float("-inf")
        self._lock = anyio.Lock()

    async def models_for(self, urls: set[str]) -> list[tuple[str, str]]:
        found = self._lookup(urls)
        if not found or time.monotonic() - self._loaded > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded > min(self.ttl, 1.0):
                    await self._refresh()
            found = self._lookup(urls)
        return found

    def _lookup(self, urls: set[str]) -> list[tuple[str, str]]:
        return sorted({m for url in urls for m in self._by_url.get(url, [])})

    async def _refresh(self) -> None:
        from prefect_cs.registry.configs import all_models

        models = await anyio.to_thread.run_sync(all_models)
        index: dict[str, list[tuple[str, str]]] = {}
        for model in models:
            index.setdefault(normalize_repo_url(model.repo_url), []).append(
                (model.owner, model.title)
            )
        self._by_url, self._loaded = index, time.monotonic()


# ---- what a delivery asks for ----------------------------------------------------------


class Ignored(Exception):
    """The delivery is valid but asks for nothing: answered 202 with this reason."""


class BadDelivery(Exception):
    """The delivery is signed but unusable: answered 400 with this reason."""


class UpstreamError(Exception):
    """GitHub's API could not tell us what we need: answered 502, nothing recorded."""


def _dict(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise BadDelivery(f"payload has no {key!r} object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadDelivery(f"payload has no {what}")
    return value


@dataclass
class Planner:
    """Turns one GitHub event into publish requests."""

    settings: WebhookSettings
    models: ModelIndex
    github: GitHubClient

    async def plan(
        self, event: str, payload: dict[str, Any], delivery: str
    ) -> list[PublishRequest]:
        if event == "push":
            return await self._tag(
                payload, delivery, self._push_tag(payload), self._push_sha(payload)
            )
        if event == "release":
            if payload.get("action") != "published":
                raise Ignored(f"release action {payload.get('action')!r} is not 'published'")
            tag = _str(_dict(payload, "release").get("tag_name"), "release.tag_name")
            return await self._tag(payload, delivery, tag, None)
        if event == "pull_request":
            return await self._pull_request(payload, delivery)
        raise Ignored(f"event {event!r} is not acted on (push of a tag, release, pull_request)")

    @staticmethod
    def _push_tag(payload: dict[str, Any]) -> str:
        ref = _str(payload.get("ref"), "ref")
        if not ref.startswith("refs/tags/"):
            raise Ignored(f"push to {ref} is not a tag")
        if payload.get("deleted"):
            raise Ignored(f"tag {ref} was deleted")
        return ref.removeprefix("refs/tags/")

    @staticmethod
    def _push_sha(payload: dict[str, Any]) -> str | None:
        head = payload.get("head_commit")
        sha = head.get("id") if isinstance(head, dict) else payload.get("after")
        return sha if isinstance(sha, str) and sha.strip("0") else None

    async def _tag(
        self, payload: dict[str, Any], delivery: str, tag: str, sha: str | None
    ) -> list[PublishRequest]:
        repository = _dict(payload, "repository")
        models = await self.models.models_for(repository_urls(repository))
        if not models:
            raise Ignored(f"no registered model has repository {repository.get('html_url')!r}")
        full_name = (
            repository.get("full_name") if isinstance(repository.get("full_name"), str) else None
        )
        return [
            PublishRequest(owner, title, tag, "all", delivery, sha=sha, repo=full_name)
            for owner, title in models
        ]

    async def _pull_request(self, payload: dict[str, Any], delivery: str) -> list[PublishRequest]:
        repository = _dict(payload, "repository")
        full_name = _str(repository.get("full_name"), "repository.full_name")
        if not self.settings.publish_repo:
            raise Ignored("no publish repository configured (CS_WEBHOOK_PUBLISH_REPO)")
        if full_name.lower() != self.settings.publish_repo.lower():
            raise Ignored(f"pull request in {full_name}, not the publish repository")
        pr = _dict(payload, "pull_request")
        action = payload.get("action")
        if action in PR_STAGE_ACTIONS:
            steps, sha = "stage", _str(_dict(pr, "head").get("sha"), "pull_request.head.sha")
        elif action == "closed" and pr.get("merged") is True:
            steps, sha = (
                "promote",
                _str(pr.get("merge_commit_sha"), "pull_request.merge_commit_sha"),
            )
        else:
            raise Ignored(f"pull request action {action!r} asks for nothing")
        number = payload.get("number", pr.get("number"))
        if not isinstance(number, int):
            raise BadDelivery("payload has no pull request number")
        files = await self._github(self.github.pr_files, full_name, number)
        paths = [p for p in files if CONFIG_PATH_RE.match(p)]
        if not paths:
            raise Ignored(f"pull request #{number} changes no config/OWNER/TITLE.yaml")
        requests = []
        for path in paths:
            owner, title = CONFIG_PATH_RE.match(path).groups()  # type: ignore[union-attr]
            tag = repo_tag_of(await self._github(self.github.file_at, full_name, path, sha), path)
            requests.append(
                PublishRequest(owner, title, tag, steps, delivery, sha=sha, repo=full_name)
            )
        return requests

    @staticmethod
    async def _github(call: Callable[..., T], *args: Any) -> T:
        """A GitHub client call off the event loop; its failure becomes a 502 (UpstreamError)."""
        try:
            return await anyio.to_thread.run_sync(call, *args)
        except GitHubError as exc:
            raise UpstreamError(str(exc)) from exc


def repo_tag_of(text: str, path: str) -> str | None:
    """The tag a config file names; None lets publish fall back to the registered repo_tag."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise Ignored(f"{path} is not valid YAML: {exc}") from exc
    tag = data.get("repo_tag") if isinstance(data, dict) else None
    return str(tag) if tag else None


# ---- the ASGI app ------------------------------------------------------------------------


def answer(code: int, /, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds `limit` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Receiver:
    secret: str
    settings: WebhookSettings
    store: DeliveryStore
    planner: Planner

    async def github(self, request: Request) -> JSONResponse:
        body = await read_body(request, self.settings.max_body_bytes)
        if body is None:
            return answer(413, error=f"body larger than {self.settings.max_body_bytes} bytes")
        if not signature_ok(self.secret, body, request.headers.get("x-hub-signature-256")):
            return answer(401, error="missing or invalid X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not DELIVERY_RE.match(delivery):
            return answer(400, error="X-GitHub-Event and X-GitHub-Delivery headers are required")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return answer(
                400,
                error=f"body is not JSON (set the webhook's content type to application/json): {exc}",
            )
        if not isinstance(payload, dict):
            return answer(400, error="body must be a JSON object")
        return await self.handle(event, delivery, payload)

    async def handle(self, event: str, delivery: str, payload: dict[str, Any]) -> JSONResponse:
        if event == "ping":
            return answer(200, status="pong")
        if self.store.seen(delivery):
            return answer(202, status="ignored", reason="duplicate delivery", delivery=delivery)
        try:
            requests = await self.planner.plan(event, payload, delivery)
        except Ignored as exc:
            return answer(202, status="ignored", reason=str(exc), delivery=delivery)
        except BadDelivery as exc:
            return answer(400, error=str(exc), delivery=delivery)
        except UpstreamError as exc:
            logger.warning("delivery %s: %s", delivery, exc)
            return answer(502, error=str(exc), delivery=delivery)
        if not self.store.claim(delivery):
            return answer(202, status="ignored", reason="duplicate delivery", delivery=delivery)
        keys = self.store.fresh([r.key() for r in requests], self.settings.request_window_seconds)
        requests = [r for r in requests if r.key() in keys]
        if not requests:
            return answer(
                202,
                status="ignored",
                reason="already requested by another delivery (e.g. the release of a pushed tag)",
                delivery=delivery,
            )
        try:
            for publish in requests:
                emit_publish_requested(publish)
        except Exception as exc:
            self.store.release(delivery, keys)
            logger.error("delivery %s: event not sent: %s", delivery, type(exc).__name__)
            return answer(503, error="could not send the publish event; redeliver later")
        logger.info("delivery %s (%s): %d publish request(s)", delivery, event, len(requests))
        return answer(
            202,
            status="accepted",
            delivery=delivery,
            publish=[
                {"model": f"{r.owner}/{r.title}", "tag": r.tag, "steps": r.steps, "sha": r.sha}
                for r in requests
            ],
        )


def load_secret(settings: WebhookSettings) -> str:
    """The HMAC key from the cluster's secrets store; a clear error when it is not set."""
    from prefect_cs.security.secrets import SecretNotFound, get_backend

    try:
        return get_backend(None).get(settings.secret_name)
    except SecretNotFound as exc:
        raise NotConfigured(
            f"the webhook secret is not set: `prefect-cs secrets set --name {settings.secret_name} --stdin`"
        ) from exc


def create_app(settings: WebhookSettings | None = None, secret: str | None = None) -> Starlette:
    """The receiver app; the secret is read once here, so rotate it by restarting."""
    root = get_settings()
    settings = settings or root.webhook
    secret = secret or load_secret(settings)
    db_path = settings.db_path or root.home / "webhook" / "deliveries.sqlite3"
    store = DeliveryStore(db_path, settings.retention_days * 86400, settings.max_deliveries)
    github = GitHubClient.from_settings()
    receiver = Receiver(
        secret,
        settings,
        store,
        Planner(settings, ModelIndex(settings.models_cache_seconds), github),
    )

    async def health(_: Request) -> JSONResponse:
        return answer(200, status="ok")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        github.close()
        store.close()

    return Starlette(
        routes=[Route("/github", receiver.github, methods=["POST"]), Route("/health", health)],
        lifespan=lifespan,
    )


def serve(host: str, port: int) -> None:
    """uvicorn in the foreground; one log line per acted-on delivery (ids only, never payloads)."""
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(), host=host, port=port, log_level="info", access_log=False)
