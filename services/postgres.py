"""The stack's own PostgreSQL for its Prefect server (`CS_STACK_DATABASE=postgresql`).

SQLite holds one server process and answers bursts with 503s; PostgreSQL is
Prefect's database for real load. The stack owns this cluster as it owns its
other parts: made with Debian's `initdb` at the first start under
`$CS_HOME/postgres`, started and stopped with the stack, reused across restarts.

Nothing else can reach it: no TCP port (so nothing to collide with, nothing a
sandbox could dial), a unix socket in the cluster's own 0700 folder with mode
0700, and a password besides (scram-sha-256). PostgreSQL refuses to run as
root, so a root stack runs it as `CS_STACK_POSTGRES_USER` (Debian's
`postgres`). The password is made once, kept 0600 in
`$CS_HOME/stack/postgres-password`, handed to initdb on its stdin and to the
Prefect server in its environment: never on a command line, never in a log.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from prefect_cs.core.errors import NotConfigured
from prefect_cs.core.settings import get_settings
from prefect_cs.services.stack_login import private_secret
from prefect_cs.services.supervisor import Background, stack_dir, system_environment

SUPERUSER = "prefect"
DATABASE = "prefect"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside the cluster's private folder
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with its final NUL


def bin_dir() -> Path:
    """The newest PostgreSQL server binaries Debian installed (/usr/lib/postgresql/<major>/bin)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not found:
        raise NotConfigured(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb):"
            " apt-get install postgresql, or start the stack with CS_STACK_DATABASE=sqlite"
        )
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)


def run_as() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: the stack's own, or CS_STACK_POSTGRES_USER when that is root."""
    if os.geteuid() != 0:
        return None
    name = get_settings().stack.postgres_user
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise NotConfigured(
            f"PostgreSQL refuses to run as root and there is no user {name!r}: apt-get install"
            " postgresql (it makes `postgres`) or set CS_STACK_POSTGRES_USER to an unprivileged"
            " user"
        ) from None


def data_dir() -> Path:
    return get_settings().home / "postgres"


def socket_file() -> Path:
    return data_dir() / f".s.PGSQL.{PORT}"


def password_file() -> Path:
    return stack_dir() / "postgres-password"


def connection_url() -> str:
    """What the Prefect server connects with (asyncpg over the unix socket); holds the password."""
    password = quote(private_secret(password_file()), safe="")
    return f"postgresql+asyncpg://{SUPERUSER}:{password}@/{DATABASE}?host={data_dir()}"


def server_environment() -> dict[str, str]:
    """The Prefect server's database settings; the server alone gets them (workers copy theirs into
    jobs)."""
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": connection_url()}


def _as_user() -> dict:
    """Popen arguments that run a command as the cluster's user (nothing when the stack is not
    root)."""
    user = run_as()
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/"}


def _check_reachable(folder: Path, user: pwd.struct_passwd | None) -> None:
    """The cluster's user must traverse every folder above the cluster: say which one it cannot."""
    if user is None:
        return
    for parent in reversed(folder.parents):
        st = parent.stat()
        if not st.st_mode & 0o001 and st.st_uid != user.pw_uid:
            raise NotConfigured(
                f"PostgreSQL runs as {user.pw_name} and cannot enter {parent} (no o+x):"
                f" chmod o+x {parent}, or set CS_HOME to a folder others can traverse"
            )


@contextmanager
def initdb_password_file(user: pwd.struct_passwd | None) -> Iterator[Path]:
    """The password in a 0600 file of the cluster's user for initdb's --pwfile, removed after.

    initdb reads its password from a file only, and as another user it cannot reopen
    the stack's stdin (/dev/stdin is root's pipe), nor enter `$CS_HOME/stack` (0700,
    the stack's user only): the file gets a 0700 folder of its own in CS_HOME, owned by
    the cluster's user.
    """
    folder = Path(tempfile.mkdtemp(prefix="initdb-", dir=get_settings().home))
    path = folder / "password"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private_secret(password_file()) + "\n")
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chown(folder, user.pw_uid, user.pw_gid)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def init_cluster() -> bool:
    """Make the cluster at the first start (initdb as its user, password on stdin); False if it
    exists."""
    folder = data_dir()
    if (folder / "PG_VERSION").exists():
        return False
    if len(str(socket_file()).encode()) > SOCKET_PATH_MAX:
        raise NotConfigured(
            f"{socket_file()} is too long for a unix socket ({SOCKET_PATH_MAX} bytes):"
            " set CS_HOME to a shorter path"
        )
    user = run_as()
    folder.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    folder.chmod(0o700)
    _check_reachable(folder, user)
    log = background().log_file
    with initdb_password_file(user) as pwfile, log.open("ab") as out:
        argv = [str(bin_dir() / "initdb"), "-D", str(folder), "-U", SUPERUSER, "-E", "UTF8"]
        argv += ["--locale=C", "--auth=scram-sha-256", f"--pwfile={pwfile}"]
        done = subprocess.run(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=system_environment(),
            check=False,
            **_as_user(),
        )
    if done.returncode:
        raise RuntimeError(f"initdb failed for {folder}; see {log}")
    return True


def background() -> Background:
    """The postmaster: unix socket only, in the cluster's own folder, mode 0700."""
    argv = [str(bin_dir() / "postgres"), "-D", str(data_dir()), "-p", str(PORT)]
    argv += ["-k", str(data_dir()), "-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"]
    return Background("postgres", argv, system_environment(), popen=_as_user())


def ready() -> bool:
    """pg_isready over the socket (it needs no password)."""
    argv = [str(bin_dir() / "pg_isready"), "-q", "-h", str(data_dir()), "-p", str(PORT)]
    return subprocess.run(argv, check=False, capture_output=True).returncode == 0


def start(timeout: float = 60) -> str:
    """Make the cluster if needed, start it, create Prefect's database; the report line."""
    made = init_cluster()
    bg = background()
    pid = bg.start_and_wait(ready, timeout, what=f"PostgreSQL in {data_dir()}")
    asyncio.run(_ensure_database())
    state = "made and started" if made else "started"
    return f"{bg.name}: pid {pid}, {state}, socket {socket_file()} (unix only), log {bg.log_file}"


async def _ensure_database() -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=str(data_dir()),
        port=PORT,
        user=SUPERUSER,
        password=private_secret(password_file()),
        database="postgres",
    )
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


def stop() -> bool:
    """A fast shutdown (pg_ctl stop -m fast, as the cluster's user), then the pid file goes."""
    bg = background()
    if bg.pid() is None:
        return bg.stop()
    argv = [str(bin_dir() / "pg_ctl"), "stop", "-D", str(data_dir()), "-m", "fast", "-w"]
    with bg.log_file.open("ab") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **_as_user())
    bg.stop()  # SIGTERM/SIGKILL if pg_ctl could not; removes the pid file
    return True
