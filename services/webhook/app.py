"""The receiver's HTTP side: `POST /github` and `GET /health`, run by `prefect-cs webhook serve`.

Why apart from the rules: this module only runs the checks in the order the package
describes (services/webhook/__init__.py) and turns each outcome into its answer
(413, 401, 400, 202 with a reason, 502, 503, or 202 accepted with the publishes
sent as `cs.publish.requested` events). The cluster key is read once at start; the
deliveries file is `$CS_HOME/webhook/deliveries.sqlite3` unless CS_WEBHOOK_DB_PATH.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prefect_cs.core import json_depth
from prefect_cs.core.errors import NotConfigured, TooDeep
from prefect_cs.core.github import GitHubClient
from prefect_cs.core.names import WEBHOOK_SECRET
from prefect_cs.core.settings import WebhookSettings, get_settings
from prefect_cs.deployments.triggers import PublishRequest, emit_publish_requested
from prefect_cs.services.webhook.deliveries import DeliveryStore
from prefect_cs.services.webhook.keys import (
    CLUSTER,
    PUBLISH_REPO_KEY,
    KeyRing,
    ModelIndex,
    Target,
    repository_urls,
)
from prefect_cs.services.webhook.planner import (
    BadDelivery,
    Ignored,
    Planner,
    Unsigned,
    UpstreamError,
)
from prefect_cs.services.webhook.policy import PublishBudget, drop_older
from prefect_cs.services.webhook.signature import body_hash, well_formed
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.webhook")  # one logger for the receiver's parts

DELIVERY_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")


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
