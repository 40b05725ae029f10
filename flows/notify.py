"""Delivers results to the web app; keeps what cannot be delivered.

A result the web app did not accept after every bounded retry is written to
`$CS_HOME/undelivered/` (folder 0700, file 0600: it holds a user's result) with
where it was going, and `prefect-cs results resend` delivers it later. Nothing is dropped. Every
payload is made strict JSON first (flows/payloads.py `sendable`, whoever built it): NaN/Infinity
become null, lone surrogates U+FFFD, and the payload says what was replaced — a result the HTTP
client cannot encode would otherwise be neither sent nor kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect_cs.blocks.webapp import DeliveryError, WebApp
from prefect_cs.core.blocks import load_named_block
from prefect_cs.core.home import private_folder, write_private
from prefect_cs.core.names import check_task_id
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.payloads import sendable

OUTPUTS_PATH = "/outputs/api/"
INPUTS_PATH = "/inputs/api/"


def load_webapp(block: str | None = None) -> WebApp:
    """The web app block `block` (a model's own, set by its v1 web app's sync), else
    CS_WEBAPP_BLOCK's. Through WebApp itself when the name is `cs-web-app/<name>`: loading by
    slug through Block first imports every installed Prefect collection (seconds, every run)."""
    fix = "run `prefect-cs webapp set --url URL --token-stdin`"
    if block:
        fix = f"add the web app's cluster user again (`prefect-cs api users add`): {fix}"
    slug, _, name = (block or get_settings().webapp_block).partition("/")
    if slug == WebApp.get_block_type_slug() and name:
        return load_named_block(name, "web app block", fix, WebApp)  # type: ignore[return-value]
    return load_named_block(  # type: ignore[return-value]
        block or get_settings().webapp_block, "web app block", fix
    )


def deliver(path: str, payload: dict[str, Any], webapp: str | None = None) -> dict[str, Any]:
    """PUT the payload to `webapp` (a block name; None: the cluster's web app) with bounded
    retries; on failure keep it, with where it was going, and say where it is kept."""
    settings = get_settings()
    payload = sendable(payload)
    try:
        load_webapp(webapp).put(
            path,
            payload,
            attempts=settings.notify.attempts,
            backoff=settings.notify.backoff_seconds,
            timeout=settings.notify.timeout_seconds,
        )
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the result is kept
        kept = keep_undelivered(path, payload, f"{type(exc).__name__}: {exc}", webapp)
        return {"delivered": False, "error": str(exc), "kept": str(kept)}
    return {"delivered": True}


def keep_undelivered(
    path: str, payload: dict[str, Any], error: str, webapp: str | None = None
) -> Path:
    settings = get_settings()
    folder = private_folder(settings.undelivered_dir, settings.home)
    name = (
        f"{task_file_stem(payload.get('task_id'))}-{path.strip('/').replace('/', '_')}"
        f"-{time.time_ns()}.json"
    )
    target = folder / name
    record = {"path": path, "payload": payload, "error": error, "webapp": webapp}
    write_private(target, json.dumps(record).encode())
    return target


def task_file_stem(task_id: object) -> str:
    """The task id where it is a UUID; anything else (`../../x`) never becomes part of a path,
    and the result is still kept."""
    try:
        return check_task_id(task_id)
    except ValueError:
        return "invalid-task-id"


def undelivered() -> list[Path]:
    folder = get_settings().undelivered_dir
    return sorted(folder.glob("*.json")) if folder.exists() else []


def resend_undelivered() -> list[tuple[Path, str]]:
    """Try every kept result once more (with the usual retries); remove what got through."""
    settings = get_settings()
    report = []
    for kept in undelivered():
        record = json.loads(kept.read_text())
        try:
            load_webapp(record.get("webapp")).put(
                record["path"],
                record["payload"],
                attempts=settings.notify.attempts,
                backoff=settings.notify.backoff_seconds,
                timeout=settings.notify.timeout_seconds,
            )
        except DeliveryError as exc:
            report.append((kept, f"still undelivered: {exc}"))
            continue
        kept.unlink()
        report.append((kept, "delivered"))
    return report
