"""Who may open an interactive app: signed links, and the cookie a link turns into.

Why: a deployment is one user's session (C/S names it `{name}-{short_id}`), so reaching the
front door must not be enough to open it. The web app gets a signed link for a deployment
from the cluster API (services/api_v1/deployments.py) and hands it to its user; the front
door (services/app_proxy.py) checks the link, sets a cookie scoped to that deployment's path
and sends the browser on without the link. Both are HMAC-SHA256 under one key only the
platform reads (`$CS_HOME/apps/link-key`, 0600, or CS_APPS_LINK_KEY from a Kubernetes Secret
where the front door and the API run in pods of their own): a link names its deployment and expires
(CS_APPS_LINK_SECONDS); a cookie names its deployment, so one deployment's cookie opens no
other. Neither reaches the model: the front door strips both before forwarding.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path

from prefect_cs.core.home import private_folder, write_private
from prefect_cs.core.settings import get_settings

COOKIE = "cs_app"
LINK_PARAM = "cs_access"
_lock = threading.Lock()


def key_file() -> Path:
    home = get_settings().home
    return private_folder(home / "apps", home) / "link-key"


def link_key() -> bytes:
    """The signing key: CS_APPS_LINK_KEY where it is given (a Kubernetes Secret, shared by the
    front door and the API), else the file, made at first use (0600, in a 0700 folder)."""
    given = get_settings().apps.link_key
    if given is not None:
        key = given.get_secret_value().strip().encode()
        if len(key) < 32:
            raise ValueError(
                "CS_APPS_LINK_KEY is shorter than 32 characters: make its Secret's key from"
                " `openssl rand -hex 32`"
            )
        return key
    path = key_file()
    with _lock:
        if not path.exists():
            write_private(path, secrets.token_hex(32).encode())
        return path.read_bytes().strip()


def _sign(kind: str, prefix: str, extra: str = "") -> str:
    message = f"{kind}|{prefix}|{extra}".encode()
    return hmac.new(link_key(), message, hashlib.sha256).hexdigest()


def access_query(prefix: str, now: float | None = None) -> str:
    """`cs_access=<expiry>.<signature>` for the deployment served at `prefix`."""
    expires = int((now or time.time()) + get_settings().apps.link_seconds)
    return f"{LINK_PARAM}={expires}.{_sign('link', prefix, str(expires))}"


def link_valid(prefix: str, value: str, now: float | None = None) -> bool:
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return False
    return hmac.compare_digest(signature, _sign("link", prefix, expires))


def cookie_value(prefix: str) -> str:
    return _sign("cookie", prefix)


def cookie_valid(prefix: str, cookie_header: str) -> bool:
    """Whether any `cs_app` cookie the browser sent opens the deployment at `prefix`."""
    wanted = cookie_value(prefix)
    return any(hmac.compare_digest(value, wanted) for value in cookie_values(cookie_header))


def cookie_values(cookie_header: str) -> list[str]:
    values = []
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            values.append(value)
    return values


def set_cookie_header(prefix: str) -> str:
    cookie: SimpleCookie = SimpleCookie()
    cookie[COOKIE] = cookie_value(prefix)
    morsel = cookie[COOKIE]
    morsel["path"], morsel["httponly"], morsel["samesite"] = prefix, True, "Lax"
    return morsel.OutputString()


def without_platform_cookie(cookie_header: str) -> str:
    """The Cookie header the app gets: the browser's cookies but the platform's."""
    kept = [p.strip() for p in cookie_header.split(";") if p.strip().partition("=")[0] != COOKIE]
    return "; ".join(p for p in kept if p)
