"""The GitHub webhook receiver: signed deliveries in, `cs.publish.requested` events out.

It only decides *what* to publish and says so with a Prefect event; the
publish deployment's trigger (deployments/triggers.py) starts the run.
Order of checks, cheapest and safest first: body size (413), a well-formed
signature header (401), the signature itself against the bytes (401, nothing
else happens: the body is not parsed), headers and JSON (400, as is a body
that is not an object or nested past CS_LIMITS_JSON_DEPTH), whether the key
that signed is the one the payload's repository needs (401), then
the event's meaning (202 with a reason when it asks for nothing), then
at-most-once (a SQLite file under CS_HOME, so restarts remember): per
`X-GitHub-Delivery` *and* per signed body.

Keys. One cluster key would let any model owner sign a push "from" another
model's repository. A model may therefore declare its own key, the model
secret `GITHUB_WEBHOOK_SECRET` (`prefect-cs models -n OWNER/TITLE secrets set
--name GITHUB_WEBHOOK_SECRET`); a delivery whose payload names that model's
repository is valid only with that key. Models without one fall back to the
cluster secret, as do deliveries for no model's repository (the publish
repository's pull requests; or the publish repository's own key, the cluster
secret named by `CS_WEBHOOK_PUBLISH_REPO_SECRET_NAME`, when set). The body is
checked against every key the receiver knows (cluster, publish repository,
each model's own) before it is read as anything but bytes; only then is it
parsed, and the payload's repository must need one of the keys that signed
it. A model with its own key is never published by a delivery signed with
another one, the publish repository's pull requests included. A model that
declares the secret without setting it accepts nothing (logged with the fix).
Keys are cached for `CS_WEBHOOK_MODELS_CACHE_SECONDS`.

Replays. The signature covers the body only, so a new `X-GitHub-Delivery`
on a captured body would pass; the receiver also remembers the sha256 of
every acted-on body for the retention period (`CS_WEBHOOK_RETENTION_DAYS`,
at most `CS_WEBHOOK_MAX_DELIVERIES` rows, oldest dropped first) and answers a
replayed body 202 `{"status": "ignored", "reason": "duplicate body …"}`, as
it answers GitHub's own redeliveries ("duplicate delivery"): a retry never
shows as an error. Real GitHub deliveries never repeat a body (a push names
`repository.pushed_at`, a pull request `updated_at`).

Older tags. A push or release never promotes a tag older than the model's
promoted one (PEP 440 order where both tags parse, else the order they were
first published in): answered 202 with why from the registry as of at most
CS_WEBHOOK_MODELS_CACHE_SECONDS ago, and every run the event starts is
`forward_only`, so `promote` checks again against the record it overwrites
(flows/publish.py); that check is the one that holds. Rolling back is the
CLI's job (`prefect-cs models rollback`). Tags `check_tag` refuses and
publishes past `CS_WEBHOOK_PUBLISHES_PER_HOUR` per model are answered 202 with
the reason (services/webhook_rules.py).

Mapping:
- `push` of `refs/tags/T` or `release` published in a model's repository
  → publish that model (found by repository URL in the registry) at T;
- `pull_request` opened/synchronize/reopened in the publish repository
  touching `config/OWNER/TITLE.yaml` → steps="stage" at the tag the PR's file names;
- that pull request closed with merged=true → steps="promote", only once
  GitHub itself says it is merged (`GET /repos/{repo}/pulls/{n}`), reading the
  config at the merge commit GitHub names; the payload's word is not enough.
Each request names the model's own repository for its commit status (the
publish run reports on the commit it built there), never the payload's.
GitHub does not put a PR's changed files in the payload: they are read from
`{CS_GITHUB_API_URL}/repos/{repo}/pulls/{n}/files`, and the file itself from
`/contents/{path}?ref={sha}` (the stand-in in tests, api.github.com otherwise),
through `prefect_cs.core.github.GitHubClient`; when GitHub cannot answer
(an error, or no answer within GITHUB_BUDGET_SECONDS in all), the delivery
gets 502 and is not remembered, so GitHub's redelivery is the retry.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse

import anyio
import yaml
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core import json_depth
from prefect_cs.core.errors import NotConfigured, TooDeep
from prefect_cs.core.github import SHA_RE, GitHubClient, GitHubError, repository_of
from prefect_cs.core.home import PRIVATE_FILE, private_folder
from prefect_cs.core.names import WEBHOOK_SECRET
from prefect_cs.core.settings import WebhookSettings, get_settings
from prefect_cs.core.tag_order import older_tag_message, older_than_promoted, tag_version
from prefect_cs.deployments.triggers import PublishRequest, emit_publish_requested
from prefect_cs.services.webhook_rules import PublishBudget, tag_refusal
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.webhook")
T = TypeVar("T")

CONFIG_PATH_RE = re.compile(r"^config/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})\.ya?ml$")
DELIVERY_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
SIGNATURE_RE = re.compile(r"^sha256=[0-9a-f]{64}$")
PR_STAGE_ACTIONS = {"opened", "synchronize", "reopened"}
GITHUB_BUDGET_SECONDS = 8.0  # all GitHub API calls of one delivery; GitHub gives up after 10 s
CLUSTER, PUBLISH_REPO_KEY = "cluster", "publish-repository"  # labels of the non-model keys
__all__ = ["older_than_promoted", "tag_version"]  # kept importable from here


# ---- signature ------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """GitHub's `X-Hub-Signature-256` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def well_formed(header: str | None) -> bool:
    """`sha256=` and 64 lowercase hex digits, as GitHub sends it: anything else is refused unread."""
    return bool(header) and SIGNATURE_RE.fullmatch(header.strip()) is not None  # type: ignore[union-attr]


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time comparison; a missing header is simply wrong."""
    if not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


def body_hash(body: bytes) -> str:
    """What a replay is recognised by: the signed bytes, whatever delivery id comes with them."""
    return hashlib.sha256(body).hexdigest()


# ---- at-most-once per delivery and per body -------------------------------------------


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
        """Why this delivery was already acted on (its id, or its body under another id), or None."""
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


# ---- which model a repository is, and which key signs for it -------------------------


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
    """The payload's repository URLs, normalized; one that is not a URL at all (urlparse
    raises on 'http://[x') names nothing."""
    keys = ("clone_url", "ssh_url", "html_url", "git_url", "svn_url", "url")
    urls = set()
    for value in (repository.get(k) for k in keys):
        if isinstance(value, str) and value:
            try:
                urls.add(normalize_repo_url(value))
            except ValueError:
                continue
    return urls


class Target(NamedTuple):
    """A registered model a repository's deliveries may be for."""

    owner: str
    title: str
    declares_key: bool = False  # GITHUB_WEBHOOK_SECRET among its declared secrets

    @property
    def name(self) -> str:
        return f"{self.owner}/{self.title}"


class ModelIndex:
    """Registered models by normalized repo URL, cached briefly; a miss refreshes (rate-limited).
    Also their configs (promoted tag, published tags), no older than the cache period: a
    delivery costs no registry read of its own."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._by_url: dict[str, list[Target]] = {}
        self._configs: dict[tuple[str, str], ModelConfig] = {}
        self._loaded = float("-inf")
        self._lock = anyio.Lock()

    async def config(self, owner: str, title: str) -> ModelConfig | None:
        """The model's config as of at most `ttl` seconds ago; None when it is not registered."""
        await self._fresh()
        return self._configs.get((owner, title))

    async def targets(self) -> list[Target]:
        """Every registered model (whose own keys may have signed a delivery)."""
        await self._fresh()
        return sorted({t for found in self._by_url.values() for t in found})

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded > self.ttl:
                    await self._refresh()

    async def models_for(self, urls: set[str]) -> list[Target]:
        found = self._lookup(urls)
        if not found or time.monotonic() - self._loaded > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded > min(self.ttl, 1.0):
                    await self._refresh()
            found = self._lookup(urls)
        return found

    def _lookup(self, urls: set[str]) -> list[Target]:
        return sorted({m for url in urls for m in self._by_url.get(url, [])})

    async def _refresh(self) -> None:
        from prefect_cs.registry.configs import all_models

        models = await anyio.to_thread.run_sync(all_models)
        index: dict[str, list[Target]] = {}
        for model in models:
            target = Target(model.owner, model.title, WEBHOOK_SECRET in model.secrets)
            index.setdefault(normalize_repo_url(model.repo_url), []).append(target)
        self._configs = {(m.owner, m.title): m for m in models}
        self._by_url, self._loaded = index, time.monotonic()


def model_key(owner: str, title: str) -> str | None:
    """The model's own GITHUB_WEBHOOK_SECRET from the secrets backend (model scope only)."""
    from prefect_cs.security.secrets import model_webhook_secret

    return model_webhook_secret(owner, title)


@dataclass
class KeyRing:
    """The key a model's deliveries must be signed with: its own GITHUB_WEBHOOK_SECRET when it
    has one, else the cluster's; None (nothing verifies) when it declares one that is not set."""

    cluster: str
    ttl: float
    lookup: Callable[[str, str], str | None] = model_key
    publish_repo: str | None = None  # the publish repository's own key, if it has one
    _cache: dict[Target, tuple[float, str | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    async def key_for(self, target: Target) -> str | None:
        own = await self._own(target)
        if own is not None:
            return own
        if target.declares_key:
            logger.warning(
                "model %s declares %s but it is not set, so no delivery for its repository is"
                " accepted: `prefect-cs models -n %s secrets set --name %s --stdin`",
                target.name,
                WEBHOOK_SECRET,
                target.name,
                WEBHOOK_SECRET,
            )
            return None
        return self.cluster

    async def signer_of(self, target: Target) -> str | None:
        """The label of the one key that signs for `target`: its name when it has its own key,
        CLUSTER when not, None when it declares one that is not set (nothing signs for it)."""
        key = await self.key_for(target)
        if key is None:
            return None
        return CLUSTER if key is self.cluster else target.name

    async def verified(self, body: bytes, header: str, targets: Sequence[Target]) -> set[str]:
        """Labels of every known key that signed `body` (CLUSTER, PUBLISH_REPO_KEY, model names),
        each distinct key tried once in constant time, before the body is parsed."""
        candidates = [(CLUSTER, self.cluster)]
        if self.publish_repo:
            candidates.append((PUBLISH_REPO_KEY, self.publish_repo))
        for target in targets:
            if (own := await self._own(target)) is not None:
                candidates.append((target.name, own))
        by_key: dict[str, list[str]] = {}
        for label, key in candidates:
            by_key.setdefault(key, []).append(label)
        return {
            label
            for key, labels in by_key.items()
            if signature_ok(key, body, header)
            for label in labels
        }

    async def _own(self, target: Target) -> str | None:
        cached = self._cache.get(target)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        own = await anyio.to_thread.run_sync(self.lookup, target.owner, target.title)
        if len(self._cache) > 10_000:  # bounded: registered models, plus churn
            self._cache.clear()
        self._cache[target] = (time.monotonic(), own)
        return own


# ---- what a delivery asks for ----------------------------------------------------------


class Ignored(Exception):
    """The delivery is valid but asks for nothing: answered 202 with this reason."""


class BadDelivery(Exception):
    """The delivery is signed but unusable: answered 400 with this reason."""


class UpstreamError(Exception):
    """GitHub's API could not tell us what we need: answered 502, nothing recorded."""


class Unsigned(Exception):
    """Signed, but not with the key this delivery needs: answered 401."""


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
    keys: KeyRing

    async def plan(
        self,
        event: str,
        payload: dict[str, Any],
        delivery: str,
        signed_for: list[Target],
        signers: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[list[PublishRequest], list[str]]:
        """The requests, and why the delivery's other models are skipped. `signed_for`: the
        models of the payload's repository whose key verified the body; `signers`: labels of
        every key that did (KeyRing.verified)."""
        if event == "push":
            tag, sha = self._push_tag(payload), self._push_sha(payload)
            return await self._tag(payload, delivery, signed_for, tag, sha), []
        if event == "release":
            if payload.get("action") != "published":
                raise Ignored(f"release action {payload.get('action')!r} is not 'published'")
            tag = _str(_dict(payload, "release").get("tag_name"), "release.tag_name")
            return await self._tag(payload, delivery, signed_for, tag, None), []
        if event == "pull_request":
            try:
                with anyio.fail_after(GITHUB_BUDGET_SECONDS):
                    return await self._pull_request(payload, delivery, signers)
            except TimeoutError:
                raise UpstreamError(
                    f"GitHub API ({self.github.api_url}) did not answer within"
                    f" {GITHUB_BUDGET_SECONDS:g} s in all; GitHub's redelivery is the retry"
                ) from None
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
        self,
        payload: dict[str, Any],
        delivery: str,
        models: list[Target],
        tag: str,
        sha: str | None,
    ) -> list[PublishRequest]:
        repository = _dict(payload, "repository")
        if not models:
            raise Ignored(f"no registered model has repository {repository.get('html_url')!r}")
        if reason := tag_refusal(tag):
            raise Ignored(reason)
        return [
            PublishRequest(
                m.owner, m.title, tag, "all", delivery, sha=sha, repo=await self._own_repo(m)
            )
            for m in models
        ]

    async def _own_repo(self, model: Target) -> str | None:
        """The model's registered repository: where its publish reports (never the payload's)."""
        config = await self.models.config(model.owner, model.title)
        return repository_of(config.repo_url) if config is not None else None

    async def _pull_request(
        self, payload: dict[str, Any], delivery: str, signers: set[str]
    ) -> tuple[list[PublishRequest], list[str]]:
        repository = _dict(payload, "repository")
        full_name = _str(repository.get("full_name"), "repository.full_name")
        if not self.settings.publish_repo:
            raise Ignored("no publish repository configured (CS_WEBHOOK_PUBLISH_REPO)")
        if full_name.lower() != self.settings.publish_repo.lower():
            raise Ignored(f"pull request in {full_name}, not the publish repository")
        needed = PUBLISH_REPO_KEY if self.keys.publish_repo else CLUSTER
        if needed not in signers:
            raise Unsigned(f"pull requests of {full_name} must be signed with the {needed} key")
        pr = _dict(payload, "pull_request")
        action = payload.get("action")
        number = payload.get("number", pr.get("number"))
        if not isinstance(number, int):
            raise BadDelivery("payload has no pull request number")
        if action in PR_STAGE_ACTIONS:
            steps, sha = "stage", _str(_dict(pr, "head").get("sha"), "pull_request.head.sha")
        elif action == "closed" and pr.get("merged") is True:
            steps, sha = "promote", await self._merge_commit(full_name, number)
        else:
            raise Ignored(f"pull request action {action!r} asks for nothing")
        files = await self._github(self.github.pr_files, full_name, number)
        paths = [p for p in files if CONFIG_PATH_RE.match(p)]
        if not paths:
            raise Ignored(f"pull request #{number} changes no config/OWNER/TITLE.yaml")
        requests, skipped = [], []
        for path in paths:
            owner, title = CONFIG_PATH_RE.match(path).groups()  # type: ignore[union-attr]
            if reason := await self._own_key_refusal(owner, title):
                skipped.append(reason)
                continue
            tag = repo_tag_of(await self._github(self.github.file_at, full_name, path, sha), path)
            if reason := tag_refusal(tag):
                skipped.append(f"{owner}/{title}: {reason}")
                continue
            repo = await self._own_repo(Target(owner, title))
            requests.append(PublishRequest(owner, title, tag, steps, delivery, sha=sha, repo=repo))
        if not requests:
            raise Ignored("; ".join(skipped))
        return requests, skipped

    async def _merge_commit(self, repo: str, number: int) -> str:
        """The merge commit GitHub itself names for a merged pull request; Ignored when GitHub
        says it is not merged (a payload claiming so is only its signer's word)."""
        found = await self._github(self.github.pull_request, repo, number)
        sha = found.get("merge_commit_sha")
        if found.get("merged") is not True or not isinstance(sha, str) or not SHA_RE.match(sha):
            raise Ignored(
                f"pull request #{number} of {repo} is not merged according to GitHub"
                " (the delivery said it was): nothing is promoted"
            )
        return sha

    async def _own_key_refusal(self, owner: str, title: str) -> str | None:
        """Why a publish-repository pull request must not publish this model: it has its own
        key, and the pull request was signed with another."""
        config = await self.models.config(owner, title)
        declares = config is not None and WEBHOOK_SECRET in config.secrets
        if await self.keys.signer_of(Target(owner, title, declares)) == CLUSTER:
            return None
        return (
            f"{owner}/{title} has its own webhook key ({WEBHOOK_SECRET}): a publish-repository"
            " pull request, signed with another key, never publishes it; push its tag signed"
            f" with its key, or run `prefect-cs models publish {owner}/{title}`"
        )

    @staticmethod
    async def _github(call: Callable[..., T], *args: Any) -> T:
        """A GitHub client call off the event loop; its failure becomes a 502 (UpstreamError)."""
        try:
            return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True)
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


# ---- never back to an older tag ----------------------------------------------------------


def why_not_promoted(request: PublishRequest, model: ModelConfig | None) -> str | None:
    """Why a webhook must not run this request (it would promote an older tag), or None."""
    if request.steps == "stage" or model is None:
        return None  # staging promotes nothing; publish itself says a model is not registered
    tag = request.tag or model.repo_tag
    how = older_than_promoted(tag, model.latest_tag, [e.tag for e in model.published_tags])
    if how is None or model.latest_tag is None:
        return None
    return older_tag_message(f"{request.owner}/{request.title}", tag, model.latest_tag, how)


async def drop_older(
    requests: list[PublishRequest], models: ModelIndex
) -> tuple[list[PublishRequest], list[str]]:
    """The requests to run, and why each other one is not run (configs of the model index)."""
    kept, reasons = [], []
    for request in requests:
        reason = why_not_promoted(request, await models.config(request.owner, request.title))
        if reason is None:
            kept.append(request)
        else:
            logger.info("delivery %s ignored for %s", request.delivery, reason)
            reasons.append(reason)
    return kept, reasons


# ---- the ASGI app ------------------------------------------------------------------------


def answer(code: int, /, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


def ignored(delivery: str, reason: str) -> JSONResponse:
    return answer(202, status="ignored", reason=reason, delivery=delivery)


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


def parse_payload(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None) or (None, why it is not one: not JSON, or nested deeper than
    CS_LIMITS_JSON_DEPTH, which json.loads would meet as a RecursionError)."""
    try:
        payload = json_depth.loads(body, get_settings().limits.json_depth)
    except TooDeep as exc:
        return None, str(exc)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, (
            f"body is not JSON (set the webhook's content type to application/json): {exc}"
        )
    if not isinstance(payload, dict):
        return None, "body must be a JSON object"
    return payload, None


UNSIGNED = (
    "missing or invalid X-Hub-Signature-256 (a model repository with its own"
    f" {WEBHOOK_SECRET} takes only deliveries signed with it)"
)


@dataclass
class Receiver:
    keys: KeyRing
    settings: WebhookSettings
    store: DeliveryStore
    planner: Planner
    budget: PublishBudget

    async def github(self, request: Request) -> JSONResponse:
        body = await read_body(request, self.settings.max_body_bytes)
        if body is None:
            return answer(
                413,
                error=f"body larger than {self.settings.max_body_bytes} bytes"
                " (CS_WEBHOOK_MAX_BODY_BYTES)",
            )
        header = request.headers.get("x-hub-signature-256")
        if not well_formed(header):
            return answer(401, error=UNSIGNED)
        targets = await self.planner.models.targets()
        signers = await self.keys.verified(body, header.strip(), targets)  # type: ignore[union-attr]
        if not signers:  # no key signed these bytes: they are never parsed
            return answer(401, error=UNSIGNED)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not DELIVERY_RE.match(delivery):
            return answer(400, error="X-GitHub-Event and X-GitHub-Delivery headers are required")
        payload, error = parse_payload(body)
        if payload is None:
            return answer(400, error=error)
        signed_for = await self.signed_for(payload, signers)
        if signed_for is None:
            return answer(401, error=UNSIGNED)
        return await self.handle(event, delivery, payload, signed_for, body_hash(body), signers)

    async def signed_for(self, payload: dict[str, Any], signers: set[str]) -> list[Target] | None:
        """The models of the payload's repository whose key is among `signers`; [] when the
        payload names no model's repository and the cluster (or publish repository) key signed
        it; None when no key that repository needs did."""
        repository = payload.get("repository")
        targets = (
            await self.planner.models.models_for(repository_urls(repository))
            if isinstance(repository, dict)
            else []
        )
        if not targets:
            return [] if signers & {CLUSTER, PUBLISH_REPO_KEY} else None
        signed = [t for t in targets if await self.keys.signer_of(t) in signers]
        return signed or None

    async def handle(
        self,
        event: str,
        delivery: str,
        payload: dict[str, Any],
        signed_for: list[Target],
        digest: str | None = None,
        signers: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> JSONResponse:
        if event == "ping":
            return answer(200, status="pong")
        if duplicate := self.store.duplicate(delivery, digest):
            return ignored(delivery, duplicate)
        try:
            requests, skipped = await self.planner.plan(
                event, payload, delivery, signed_for, signers
            )
            requests, older = await drop_older(requests, self.planner.models)
            older = skipped + older
        except Ignored as exc:
            return ignored(delivery, str(exc))
        except Unsigned as exc:
            return answer(401, error=f"{UNSIGNED}: {exc}")
        except BadDelivery as exc:
            return answer(400, error=str(exc), delivery=delivery)
        except UpstreamError as exc:
            logger.warning("delivery %s: %s", delivery, exc)
            return answer(502, error=str(exc), delivery=delivery)
        if not requests:
            return ignored(delivery, "; ".join(older))
        if duplicate := self.store.claim(delivery, digest):
            return ignored(delivery, duplicate)
        return self.emit(event, delivery, requests, older)

    def emit(
        self, event: str, delivery: str, requests: list[PublishRequest], older: list[str]
    ) -> JSONResponse:
        keys = self.store.fresh([r.key() for r in requests], self.settings.request_window_seconds)
        requests = [r for r in requests if r.key() in keys]
        if not requests:
            return ignored(
                delivery,
                "; ".join(
                    ["already requested by another delivery (e.g. the release of a pushed tag)"]
                    + older
                ),
            )
        requests, limited = self.budget.admit(requests)
        sent = {r.key() for r in requests}
        self.store.forget_requests([k for k in keys if k not in sent])
        older = older + limited
        if not requests:
            return ignored(delivery, "; ".join(older))
        try:
            for publish in requests:
                emit_publish_requested(publish)
        except Exception as exc:
            self.budget.release(delivery)
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
            **({"skipped": older} if older else {}),
        )


def load_secret(settings: WebhookSettings, name: str | None = None) -> str:
    """An HMAC key from the cluster's secrets store (default: the cluster key); a clear error
    when it is not set."""
    from prefect_cs.security.secrets import SecretNotFound, get_backend

    wanted = name or settings.secret_name
    try:
        return get_backend(None).get(wanted)
    except SecretNotFound as exc:
        raise NotConfigured(
            f"the webhook secret is not set: `prefect-cs secrets set --name {wanted} --stdin`"
        ) from exc


def create_app(settings: WebhookSettings | None = None, secret: str | None = None) -> Starlette:
    """The receiver app; the cluster secret is read once here, so rotate it by restarting
    (models' own keys are re-read after CS_WEBHOOK_MODELS_CACHE_SECONDS)."""
    root = get_settings()
    settings = settings or root.webhook
    secret = secret or load_secret(settings)
    db_path = settings.db_path or root.home / "webhook" / "deliveries.sqlite3"
    store = DeliveryStore(db_path, settings.retention_days * 86400, settings.max_deliveries)
    github = GitHubClient.from_settings()
    publish_name = settings.publish_repo_secret_name
    publish_key = load_secret(settings, publish_name) if publish_name else None
    keys = KeyRing(secret, settings.models_cache_seconds, publish_repo=publish_key)
    budget = PublishBudget(db_path, settings.publishes_per_hour)
    receiver = Receiver(
        keys,
        settings,
        store,
        Planner(settings, ModelIndex(settings.models_cache_seconds), github, keys),
        budget,
    )

    async def health(_: Request) -> JSONResponse:
        return answer(200, status="ok")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        github.close()
        budget.close()
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
