"""Cluster users: each web app that calls this cluster logs in as one (C/S's `Cluster` row).

Why: one cluster may serve several web apps, and none may read, run, build or
sync another's projects. A cluster user is
- a name (C/S's web app sends its service account's username);
- a password, kept as the cluster secret `CLUSTER_USER_<name>_PASSWORD`, which the
  web app holds as `Cluster.cluster_password` and sends to `/api/v1/login/access-token`;
- its web app (a `cs-web-app` block, URL and token, named `tenant-<name>`): where the
  results of its projects are PUT, with that web app's own credentials.
The record (id, name, block) is in services/api_v1/store.py; nothing secret is.
"""

from __future__ import annotations

import hmac
import re
import secrets

from prefect_cs.core.errors import InvalidValue, SecretNotFound
from prefect_cs.services.api_v1.store import ClusterUser, Store

USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
USERNAME_RULE = "letters, digits, '_' and '-' (1 to 40 characters)"


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidValue(f"invalid cluster user name {username!r}: use {USERNAME_RULE}")
    return username


def password_secret(username: str) -> str:
    """The cluster secret holding the user's password."""
    return f"CLUSTER_USER_{check_username(username)}_PASSWORD"


def webapp_block(username: str) -> str:
    """The web app block of the user's results (lowercase, as block names must be)."""
    from prefect_cs.security.secrets import encode

    return f"cs-web-app/tenant-{encode(check_username(username))}"


def add_user(
    store: Store,
    username: str,
    url: str,
    webapp_token: str | None = None,
    password: str | None = None,
    oauth_client: tuple[str, str] | None = None,
) -> tuple[ClusterUser, str]:
    """Create (or update) a cluster user: its web app block, its password secret (a new random
    one unless given), its record. Returns the user and the password, to hand the web app.
    Results go to the web app with `webapp_token`, or, as C/S v1's cluster sent them, with
    a bearer token got by the OAuth client (id, secret) of `oauth_client`."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.security.secrets import get_backend

    if (webapp_token is None) == (oauth_client is None):
        raise ValueError(
            "a web app's cluster user needs exactly one way to reach its web app: its token"
            " (--webapp-token-stdin) or its OAuth client (--client-id, --client-secret-stdin)"
        )
    block = webapp_block(username)
    password = password or secrets.token_urlsafe(32)
    if oauth_client is not None:
        client_id, client_secret = oauth_client
        webapp = WebApp(base_url=url, client_id=client_id, client_secret=client_secret)
    else:
        webapp = WebApp(base_url=url, token=webapp_token)
    webapp.save(block.partition("/")[2], overwrite=True)
    get_backend(None).set(password_secret(username), password)
    return store.save_user(username, block, url), password


def add_superuser(store: Store, username: str) -> tuple[ClusterUser, str]:
    """A superuser (C/S's create_super_user.py): creates and approves users through
    /api/v1/users/, has no web app, so runs nothing; its password a new random secret."""
    from prefect_cs.security.secrets import get_backend

    password = secrets.token_urlsafe(32)
    get_backend(None).set(password_secret(username), password)
    return store.save_user(username, "", superuser=True), password


def create_user(
    store: Store, username: str, url: str, email: str, password: str, client: tuple[str, str]
) -> ClusterUser | None:
    """POST /api/v1/users/: a new, unapproved user with the password and OAuth client its
    creator gave; None when the name is taken (then nothing of the other user is touched)."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.security.secrets import get_backend

    if not password:
        raise InvalidValue("the password must not be empty")
    block = webapp_block(check_username(username))
    user = store.insert_user(username, block, url, email)
    if user is None:
        return None
    try:
        webapp = WebApp(base_url=url, client_id=client[0], client_secret=client[1])
        webapp.save(block.partition("/")[2], overwrite=True)
        get_backend(None).set(password_secret(username), password)
    except Exception:
        store.delete_user(username)
        raise
    return user


def set_approved(store: Store, username: str, approved: bool) -> ClusterUser | None:
    return store.set_approved(username, approved) if USERNAME_RE.fullmatch(username) else None


def password_matches(username: str, given: str) -> bool:
    """The given password against the user's secret, in constant time; False when unset."""
    from prefect_cs.security.secrets import get_backend

    try:
        expected = get_backend(None).get(password_secret(username))
    except SecretNotFound:
        return False
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def authenticate(store: Store, username: str, password: str) -> ClusterUser | None:
    """The user when the name is known and the password is its own, else None."""
    if not USERNAME_RE.fullmatch(username):
        return None
    user = store.user_named(username)
    if user is None or not password_matches(username, password):
        return None
    return user
