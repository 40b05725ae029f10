"""v1 access tokens and the one auth dependency every v1 route but login goes through.

Why JWTs: C/S's web app logs in with its password (`Cluster.ensure_access_token`),
keeps the token and its `expires_at`, and sends `Authorization: Bearer <token>`
until it is about to expire, so the cluster checks a signature and a user id on
each call instead of a password. Tokens are HS256, signed with the cluster secret
CS_API_JWT_SECRET_NAME (made at the API's first start), `sub` = the user's id (a
user deleted and added again has a new id: its old tokens die), lifetime
CS_API_LOGIN_SECONDS. The answer's `expires_at` is EARLY_RENEWAL earlier than the
token's `exp`: C/S's web app renews a token only 60 s after that time, and would
otherwise send an expired one for a minute. A missing header answers 401 "Not
authenticated", a bad, expired or foreign-key token 401 "Could not validate
credentials", both with `WWW-Authenticate: Bearer`, as FastAPI's OAuth2 bearer did.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime

import jwt
from prefect_cs.core.errors import NotConfigured, SecretNotFound
from prefect_cs.core.settings import ApiSettings
from prefect_cs.services.api_v1.errors import HttpError
from prefect_cs.services.api_v1.store import ClusterUser, Store
from starlette.requests import Request

ALGORITHM = "HS256"
AUDIENCE = "prefect-cs-api-v1"
EARLY_RENEWAL = 120  # seconds between the advertised expires_at and the token's exp
MIN_KEY_BYTES = 32  # RFC 7518: an HS256 key at least as long as the hash
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def not_authenticated() -> HttpError:
    return HttpError(401, "Not authenticated", CHALLENGE)


def invalid_credentials() -> HttpError:
    return HttpError(401, "Could not validate credentials", CHALLENGE)


def signing_key(settings: ApiSettings) -> str:
    """The signing key from the cluster's secrets store, made there (random, 64 bytes) when
    unset; one shorter than MIN_KEY_BYTES is refused, naming the fix."""
    from prefect_cs.security.secrets import get_backend

    backend = get_backend(None)
    try:
        key = backend.get(settings.jwt_secret_name)
    except SecretNotFound:
        key = secrets.token_urlsafe(64)
        backend.set(settings.jwt_secret_name, key)
    if len(key.encode()) < MIN_KEY_BYTES:
        raise NotConfigured(
            f"the cluster secret {settings.jwt_secret_name} (the v1 token signing key) is"
            f" shorter than {MIN_KEY_BYTES} bytes: delete it (`prefect-cs secrets delete"
            f" {settings.jwt_secret_name}`) and restart the API, which makes a new one"
        )
    return key


class Tokens:
    """Issues and reads tokens; the key is read (or made) at first use, so the API starts
    without the secrets store and a 1.6-only cluster never makes one."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings, self.seconds = settings, settings.login_seconds
        self._key: str | None = None
        self._lock = threading.Lock()  # the first logins at once read (or make) one key

    @property
    def key(self) -> str:
        with self._lock:
            if self._key is None:
                self._key = signing_key(self.settings)
            return self._key

    def issue(self, user: ClusterUser) -> dict[str, str]:
        """The login answer: C/S's `Token` schema (access_token, token_type, expires_at)."""
        issued = int(time.time())
        claims = {"sub": str(user.id), "aud": AUDIENCE, "iat": issued, "exp": issued + self.seconds}
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM)
        advertised = datetime.fromtimestamp(issued + self.seconds - EARLY_RENEWAL, UTC)
        return {"access_token": token, "token_type": "bearer", "expires_at": advertised.isoformat()}

    def user_id(self, token: str) -> int:
        """The user id a token names, if this cluster signed it and it has not expired."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["exp", "iat", "sub", "aud"]},
            )
            return int(claims["sub"])
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise invalid_credentials() from exc


def bearer(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`; 401 when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise not_authenticated()
    return token.strip()


def current_user(request: Request, tokens: Tokens, store: Store) -> ClusterUser:
    """The dependency: the cluster user the request's token names (blocking: a thread)."""
    user = store.user(tokens.user_id(bearer(request)))
    if user is None:
        raise invalid_credentials()
    return user
