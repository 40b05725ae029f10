"""What CS_HOME holds and who may open it (DESIGN, "Least privilege").

CS_HOME keeps the platform's private state: the stack's Prefect database (every
block, the key that decrypts them), the API login, task storage, users' output
zips, undelivered results, the stack's logs and passwords. Model code runs as
another uid on the same machine, and an attacker who read `prefect/prefect.db`
(0644) owned the platform. So:

- CS_HOME itself is 0711: others may pass through it, never list or read it.
- What the model's uid must reach (its own read-only virtualenv under `envs`, its
  checkout under `repos` while publish builds and tests it) sits under 0711 folders.
- Everything else directly in CS_HOME is private: folders 0700, files 0600. A
  0700 folder closes everything below it, so checking CS_HOME's own entries (and
  the few named secret files in them) is the whole check, and it stays fast
  however many outputs there are.

`stack start` makes what is missing with these modes and refuses a CS_HOME that
is more open than that, naming each path and the `chmod` that closes it; it
never changes an existing mode itself (a folder someone opened may have been
read already, and the operator should know).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_cs.core.errors import SettingsError

PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600
TRAVERSE_ONLY = 0o711
PRIVATE_UMASK = 0o077  # what the stack's own processes create is born 0700/0600

PREFECT = "prefect"  # the stack's Prefect server home: prefect.db and its journal
AUTH_FILE = "prefect-auth"
POSTGRES = "postgres"  # owned by the PostgreSQL user when the stack is root

REACHED_BY_MODELS = {
    "envs": "model virtualenvs: the model's uid runs its own, read-only (tiers/local.py)",
    "repos": "publish's checkouts: the model's install and tests build in their own",
}
PRIVATE_FOLDERS = {
    PREFECT: "the stack's Prefect database: every block and the key that decrypts them",
    "stack": "pid files, logs, the web app stand-in's request log, database passwords",
    "outputs": "users' output zips (the local outputs block)",
    "task-storage": "parameters and results of users' inputs calls",
    "undelivered": "results the web app did not accept",
    "api": "the cluster API's pending parse and sim requests",
    "webhook": "webhook delivery ids and body hashes",
    "wheels": "the platform wheel model images are built with",
}
SECRET_FILES = (
    f"{PREFECT}/prefect.db",
    f"{PREFECT}/prefect.db-wal",
    f"{PREFECT}/prefect.db-shm",
    f"{PREFECT}/prefect.db-journal",
    "stack/postgres-password",
    "stack/redis-messaging-password",
    "stack/redis-messaging.conf",
    "stack/webapp-requests.jsonl",
    "webhook/deliveries.sqlite3",
)


@dataclass(frozen=True)
class Exposure:
    """One path under CS_HOME that is more open than it may be, and the command that closes it."""

    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path} {self.problem}: run `{self.fix}`"


def prefect_home(home: Path) -> Path:
    """Where the stack's Prefect server keeps its database, whatever the shell's PREFECT_HOME."""
    return home / PREFECT


# ---- making what is missing -------------------------------------------------------


def _make(path: Path, mode: int) -> None:
    """Create one folder with exactly `mode` (mkdir's mode is cut by the umask); keep an existing
    one."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        return
    path.chmod(mode)


def ensure_home(home: Path) -> Path:
    """CS_HOME, 0711 when made here; missing folders above it are made 0711 too, so the model's
    uid can pass through to its environment (e.g. /var/lib/prefect-cs/<name>)."""
    for folder in (*reversed(home.parents), home):
        if not folder.exists():
            _make(folder, TRAVERSE_ONLY)
    return home


def private_folder(path: Path, home: Path) -> Path:
    """`path` and any missing folder between it and CS_HOME, made 0700; CS_HOME 0711. A path
    elsewhere (a block or setting may name one) is made 0700 itself, its parents as usual."""
    if not path.is_relative_to(home):
        path.parent.mkdir(parents=True, exist_ok=True)
        _make(path, PRIVATE_FOLDER)
        return path
    ensure_home(home)
    relative = path.relative_to(home)
    for depth in range(1, len(relative.parts) + 1):
        _make(home.joinpath(*relative.parts[:depth]), PRIVATE_FOLDER)
    return path


def traverse_folder(path: Path, home: Path) -> Path:
    """A folder directly in CS_HOME that the model's uid passes through (envs, repos): 0711."""
    ensure_home(home)
    _make(path, TRAVERSE_ONLY)
    return path


def traverse_path(path: Path) -> Path:
    """`path` and every missing folder on the way to it, made 0711 (a model's environment under
    envs/: its uid passes through, no one lists another model's tags)."""
    for folder in (*reversed(path.parents), path):
        if not folder.exists():
            _make(folder, TRAVERSE_ONLY)
    return path


def prepare_home(home: Path) -> None:
    """Every folder the platform writes under CS_HOME, made with its mode where missing."""
    for name in REACHED_BY_MODELS:
        traverse_folder(home / name, home)
    for name in PRIVATE_FOLDERS:
        private_folder(home / name, home)


def write_private(path: Path, data: bytes) -> None:
    """Write a file that is 0600 from its first byte (not chmod-ed after), replacing its content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
        f.write(data)


@contextmanager
def private_umask() -> Iterator[None]:
    """Within the block, files and folders this process creates are born 0600/0700."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


# ---- checking what is there -------------------------------------------------------


def exposures(home: Path) -> list[Exposure]:
    """Each path under CS_HOME more open than DESIGN allows; [] when CS_HOME does not exist yet."""
    if not home.is_dir():
        return []
    found = _traverse_only(home, "CS_HOME")
    found += _owner(home, os.geteuid(), f"chown {os.geteuid()} {home}")
    for entry in sorted(home.iterdir()):
        found += _entry(entry)
    for name in SECRET_FILES:
        if (home / name).exists():
            found += _private(home / name, f"chmod 600 {home / name}")
    return found


def _entry(path: Path) -> list[Exposure]:
    """One entry of CS_HOME: a folder models reach (0711 at most), else private."""
    owner = _owner(path, os.geteuid(), f"chown {os.geteuid()} {path}")
    if path.name in REACHED_BY_MODELS and path.is_dir():
        return _traverse_only(path, "a folder the model's uid passes through") + owner
    fix = f"chmod -R go-rwx {path}" if path.is_dir() else f"chmod 600 {path}"
    if path.name == POSTGRES:  # the PostgreSQL user's own (services/postgres.py)
        owner = []
    return _private(path, fix) + owner


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _traverse_only(path: Path, what: str) -> list[Exposure]:
    mode = _mode(path)
    if not mode & 0o066:
        return []
    problem = f"({what}) has mode {mode:o}: others may list or change it; it must be 711 at most"
    return [Exposure(path, problem, f"chmod 711 {path}")]


def _private(path: Path, fix: str) -> list[Exposure]:
    mode = _mode(path)
    if not mode & 0o077:
        return []
    kind = "folder" if path.is_dir() else "file"
    limit = "700" if path.is_dir() else "600"
    problem = f"is a private {kind} with mode {mode:o}: others may open it; it must be {limit}"
    return [Exposure(path, problem, fix)]


def _owner(path: Path, uid: int, fix: str) -> list[Exposure]:
    owner = path.stat().st_uid
    if owner == uid:
        return []
    problem = f"belongs to uid {owner}, not the stack's user (uid {uid}), who may change its mode"
    return [Exposure(path, problem, fix)]


def refuse_exposed(home: Path) -> None:
    """SettingsError naming every exposed path and its fix, if there is one."""
    found = exposures(home)
    if not found:
        return
    lines = "\n".join(f"  {e}" for e in found)
    fixes = " && ".join(dict.fromkeys(e.fix for e in found))
    raise SettingsError(
        f"CS_HOME {home} is more open than its private state allows (folders 700, files 600,"
        f" CS_HOME and envs/repos 711):\n{lines}\nClose them, then start again: {fixes}"
    )


def closed_on_the_way(path: Path) -> Path | None:
    """The first folder down to `path` that others cannot pass through (no o+x), if any."""
    return next((f for f in (*reversed(path.parents), path) if not _mode(f) & 0o001), None)


def model_reach_warning(home: Path) -> str | None:
    """As root, model code runs as another uid that must pass through to `envs`: say where it
    cannot."""
    if os.geteuid() != 0:
        return None
    blocked = closed_on_the_way(home / "envs")
    if blocked is None:
        return None
    return (
        f"warning: the model's uid cannot pass through {blocked} (no o+x) to {home / 'envs'}, so"
        f" publishing on the local tier will fail: `chmod o+x {blocked}`, or set CS_HOME to a"
        " folder others can pass through (e.g. /var/lib/prefect-cs/<name>, as ./quickstart.sh does)"
    )


def earlier_database(home: Path, shell_prefect_home: Path) -> Path | None:
    """A stack's SQLite database left where the shell's PREFECT_HOME put it, before the stack kept
    it under CS_HOME: this CS_HOME ran a stack (its login exists) and has no Prefect folder yet."""
    if prefect_home(home).exists() or not (home / AUTH_FILE).exists():
        return None
    old = shell_prefect_home / "prefect.db"
    return old if old.exists() and old.parent.resolve() != prefect_home(home).resolve() else None


def refuse_earlier_database(home: Path, shell_prefect_home: Path) -> None:
    """Refuse to start on an empty database while this stack's registry sits elsewhere."""
    old = earlier_database(home, shell_prefect_home)
    if old is None:
        return
    new = prefect_home(home)
    raise SettingsError(
        f"the stack keeps its Prefect database in {new} (whatever PREFECT_HOME says), which does"
        f" not exist yet, and this CS_HOME's stack ran before with its database in {old}."
        f" Move it: `install -d -m 700 {new} && mv {old}* {new}/`; or, to start on a new, empty"
        f" database: `install -d -m 700 {new}`"
    )
