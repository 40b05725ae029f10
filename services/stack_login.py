"""The stack's login and its other private secret files, kept 0600 under CS_HOME.

Why: the server always requires a login (`PREFECT_SERVER_API_AUTH_STRING`); without
one, anything that reaches the port (model code included) reads every block with
its secrets. The `user:password` string is made at the first start, kept 0600 in
`$CS_HOME/prefect-auth` and reused; workers, the CLI and jobs send it as
`PREFECT_API_AUTH_STRING`. The stack's PostgreSQL and messaging Redis keep their
passwords the same way (`private_secret`). Secrets reach processes through their
environment, never their command line (`/proc/<pid>/cmdline` is world-readable).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from prefect_cs.core.errors import SettingsError
from prefect_cs.core.home import ensure_home, private_folder
from prefect_cs.core.settings import get_settings

AUTH_USER = "admin"
AUTH_ENV = "PREFECT_API_AUTH_STRING"


def api_url() -> str:
    """The Prefect API this machine's stack serves (PREFECT_API_URL, else the local default)."""
    return os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"


def auth_file() -> Path:
    return get_settings().auth_file


def ensure_auth_file() -> Path:
    """Make `$CS_HOME/prefect-auth` (`admin:<random>`, mode 0600) unless it exists."""
    path = auth_file()
    ensure_home(get_settings().home)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")
    return path


def read_auth_file(path: Path) -> str:
    """The auth string in `path`, refused if others may read it or it is not `user:password`."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SettingsError(
            f"{path} holds the Prefect API password but has mode {mode:o}: run chmod 600 {path}"
        )
    value = path.read_text().strip()
    if ":" not in value or value.startswith(":") or value.endswith(":"):
        raise SettingsError(
            f"{path} must hold one line user:password: delete it and run `prefect-cs stack start`"
            " to make a new one (then restart the stack)"
        )
    return value


def private_secret(path: Path) -> str:
    """A random secret kept 0600 in `path` (made on first use), for a part the stack owns
    (its PostgreSQL, its messaging Redis); refused if others may read it."""
    private_folder(path.parent, get_settings().home)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SettingsError(
                f"{path} holds a password but has mode {mode:o}: chmod 600 {path}"
            ) from None
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def api_auth_string() -> str:
    """What this machine's server requires and its clients send.

    `PREFECT_API_AUTH_STRING` when the operator set it, else the stack's file (made on first use).
    """
    return os.environ.get(AUTH_ENV) or read_auth_file(ensure_auth_file())


def auth_source() -> str:
    """Where the UI login comes from, for the line that prints the stack's URL."""
    path = auth_file()
    if path.exists() and read_auth_file(path) == api_auth_string():
        return f"the whole line in {path} ({AUTH_USER}:<password>)"
    return f"the value of {AUTH_ENV} (user:password)"


def load_local_api_auth() -> None:
    """Let this process (the CLI) authenticate to the local stack's server, before Prefect is
    imported.

    Only when no credential is set (`PREFECT_API_AUTH_STRING`, `PREFECT_API_KEY`),
    the API is on this machine and the stack has made its file: the local
    password is never sent to another server.
    """
    if os.environ.get(AUTH_ENV) or os.environ.get("PREFECT_API_KEY"):
        return
    if urlparse(api_url()).hostname not in ("127.0.0.1", "localhost", "::1"):
        return
    if auth_file().exists():
        os.environ[AUTH_ENV] = read_auth_file(auth_file())


@contextmanager
def client_auth(auth: str) -> Iterator[None]:
    """This process sends `auth` to the API, even if Prefect was imported before the file existed
    (the first `stack start`): Prefect reads its settings once, at import."""
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    os.environ[AUTH_ENV] = auth
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: auth}):
        yield
