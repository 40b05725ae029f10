"""What the webhook receiver refuses even from a correctly signed delivery.

A valid signature says who sent a delivery, not that what it asks is sane:
a key holder could name a tag git or the platform refuses (every one a failing
run, with their text in a commit status), send publish after publish until
the pool is busy with nothing else, or push an older tag over the promoted one.
These rules answer such deliveries 202 with the reason, before any event is
emitted; the planner (planner.py) only says what a delivery asks for.

Older tags. A push or release never promotes a tag older than the model's
promoted one (PEP 440 order where both tags parse, else the order they were
first published in): answered 202 with why from the registry as of at most
CS_WEBHOOK_MODELS_CACHE_SECONDS ago, and every run the event starts is
`forward_only`, so `promote` checks again against the record it overwrites
(flows/publish.py); that check is the one that holds. Rolling back is the
CLI's job (`prefect-cs models rollback`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.home import PRIVATE_FILE
from prefect_cs.core.names import check_tag
from prefect_cs.core.tag_order import older_tag_message, older_than_promoted
from prefect_cs.deployments.triggers import PublishRequest
from prefect_cs.services.webhook.keys import ModelIndex

logger = logging.getLogger("prefect_cs.webhook")  # one logger for the receiver's parts
HOUR = 3600.0


def tag_refusal(tag: str | None) -> str | None:
    """Why `tag` can never be published (core/names.check_tag), or None; None is the
    model's registered repo_tag, already checked when it was registered."""
    if tag is None:
        return None
    try:
        check_tag(tag)
    except ValueError as exc:
        return f"{exc}; nothing is published"
    return None


class PublishBudget:
    """At most `per_hour` accepted publishes per model in any sliding hour, counted in the
    receiver's SQLite file (a restart does not reset it). 0 turns the limit off."""

    def __init__(self, path: Path, per_hour: int) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
        self.per_hour = per_hour
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS publishes"
            " (model TEXT NOT NULL, delivery TEXT NOT NULL, at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS publishes_model ON publishes (model, at)")

    def admit(self, requests: Sequence[PublishRequest]) -> tuple[list[PublishRequest], list[str]]:
        """The requests within their model's budget (now counted), and why the others are not."""
        if self.per_hour <= 0:
            return list(requests), []
        now, admitted, reasons = time.time(), [], []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM publishes WHERE at < ?", (now - HOUR,))
                for request in requests:
                    name = f"{request.owner}/{request.title}"
                    (count,) = self._db.execute(
                        "SELECT COUNT(*) FROM publishes WHERE model = ?", (name,)
                    ).fetchone()
                    if count >= self.per_hour:
                        reasons.append(self.refusal(name))
                        continue
                    self._db.execute(
                        "INSERT INTO publishes (model, delivery, at) VALUES (?, ?, ?)",
                        (name, request.delivery, now),
                    )
                    admitted.append(request)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return admitted, reasons

    def refusal(self, name: str) -> str:
        return (
            f"{name}: {self.per_hour} publishes already started by webhooks in the last hour"
            " (CS_WEBHOOK_PUBLISHES_PER_HOUR); wait, or publish by hand with"
            f" `prefect-cs models publish {name}`"
        )

    def release(self, delivery: str) -> None:
        """Un-count a delivery whose events could not be sent (its redelivery counts once)."""
        with self._lock:
            self._db.execute("DELETE FROM publishes WHERE delivery = ?", (delivery,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
