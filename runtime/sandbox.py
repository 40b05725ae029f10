"""The sandbox every piece of model code runs in: the simulate child, warm inputs processes,
install.sh, the cs-config install and the model's own tests.

Model apps are written by outside economists, so their code is untrusted. Three modes
(CS_SANDBOX), chosen per tier:

- `bwrap` (process tier, the default): Debian's bubblewrap. The model runs as a dedicated uid
  (CS_MODEL_UID, 10001 when the worker is root) in its own user, pid, network, ipc and uts
  namespaces, with no further user namespaces of its own (`--disable-userns`) and a seccomp
  filter (seccomp.py): it sees only /usr, /etc, its own environment, the interpreter that
  environment was made from and where its declared Debian packages keep data under /var/lib or
  /opt (both recorded by the platform at publish, never read from files the model wrote:
  system_packages.py) and a private work folder (the only thing it can write); /proc shows its
  own processes; it has no route to the Prefect API, the web app, Redis or the registry: its
  network namespace has only its own loopback, or, for install steps and `internet: true`, a
  user-mode network stack without the host's loopback (usernet.py); everything but its work
  folder (TMPDIR too) is read-only, /tmp included; and when the call ends its pid namespace
  ends, so every process it started dies with it. Its resources are bounded by the kernel
  (confinement.py).
- `uid` (container tiers, where Docker's seccomp profile forbids namespaces): the container
  is the filesystem and network boundary; the model runs as CS_MODEL_UID so it cannot read the
  flow's environment through /proc or write the flow's files, and every process of that uid is
  killed when the call ends. Only for a container of its own: on a shared host that kill would
  reach every process of the uid.
- `none`: development only. Every call logs that model code runs unsandboxed.

A tier whose sandbox cannot be had refuses to run model code (NotConfigured names the fix).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect_cs.core.errors import NotConfigured

DEFAULT_MODEL_UID = 10001
UNSANDBOXED = (
    "model code runs UNSANDBOXED (CS_SANDBOX=none): it can read this machine's credentials and"
    " reach the Prefect API; development only"
)
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
logger = logging.getLogger("prefect_cs.sandbox")


@dataclass(frozen=True)
class Sandbox:
    """How one piece of model code is confined; `wrap` turns its argv into a sandboxed one."""

    mode: str
    uid: int | None

    def wrap(
        self,
        argv: Sequence[str],
        *,
        work: Path,
        readable: Sequence[Path | str] = (),
        writable: Sequence[Path | str] = (),
        as_pid_1: bool = False,
        chdir: Path | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """The command to run: argv itself, or argv inside bubblewrap with only these paths.

        as_pid_1: argv is the sandbox's pid 1 instead of bubblewrap's init, so that bubblewrap
        waits for it and the caller's wait4 measures the whole tree (runtime/usage.py).
        chdir: where it starts (default: its work folder). extra: bubblewrap options of the
        call's confinement (confinement.py: user namespace rules, seccomp, network).
        """
        if self.mode != "bwrap":
            return list(argv)
        prefix = bwrap_prefix(work, readable, writable, chdir=chdir, extra=extra)
        if as_pid_1:
            prefix.insert(1, "--as-pid-1")
        return [*prefix, "--", *argv]

    def prepare(self, *folders: Path) -> None:
        """Hand the folders the model writes to its uid (only root can, and only root needs to)."""
        if self.uid is None or os.geteuid() != 0:
            return
        for folder in folders:
            chown_tree(folder, self.uid)
            # the flow reads the model's answer there, and in a pod it has no CAP_DAC_OVERRIDE
            folder.chmod(folder.stat().st_mode | 0o011)

    def run_as(self) -> int | None:
        """The uid to switch to before exec (None: stay the flow's user)."""
        return self.uid if self.uid is not None and os.geteuid() == 0 else None

    def end(self) -> None:
        """After a call: in `uid` mode nothing of the model's uid may live on."""
        if self.mode == "uid" and self.run_as() is not None:
            kill_uid(self.uid)  # type: ignore[arg-type]


def model_sandbox() -> Sandbox:
    """The sandbox the settings ask for, checked usable; NotConfigured (naming the fix) if not."""
    from prefect_cs.core.settings import get_settings

    settings = get_settings()
    mode = settings.sandbox
    uid = settings.model_uid
    if mode == "none":
        logger.warning(UNSANDBOXED)
        return Sandbox(mode, uid)
    if uid is None and os.geteuid() == 0:
        uid = DEFAULT_MODEL_UID
    if mode == "bwrap":
        problem = bwrap_problem(uid if os.geteuid() == 0 else None)
        if problem:
            raise NotConfigured(
                f"the model sandbox (bubblewrap) cannot run here: {problem}. Install Debian's"
                " bubblewrap (`apt-get install bubblewrap`) on a kernel that allows user"
                " namespaces; for development only, CS_SANDBOX=none runs models unsandboxed"
            )
    elif mode == "uid" and uid is None:
        raise NotConfigured(
            "CS_SANDBOX=uid needs the flow to run as root with CS_MODEL_UID set (container tiers)"
        )
    return Sandbox(mode, uid)


def bwrap_prefix(
    work: Path,
    readable: Sequence[Path | str],
    writable: Sequence[Path | str],
    *,
    chdir: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """bubblewrap's options: a read-only system, the given paths, a private /tmp and work folder.

    No network namespace is shared: a sandbox that needs the internet gets it through its
    confinement's user-mode network stack (`extra`), never the host's loopback.
    """
    args = [*_system(), *extra]
    for path in _outside_usr(readable):
        args += ["--ro-bind", path, path]
    for path in dict.fromkeys(str(p) for p in (*writable, work)):
        args += ["--bind", path, path]
    # Nothing else is writable: not /tmp, not the folders bubblewrap made to hold the binds.
    args += ["--remount-ro", "/tmp", "--remount-ro", "/"]
    return args + ["--chdir", str(chdir or work), "--setenv", "TMPDIR", str(work)]


def _system() -> list[str]:
    """Namespaces and the read-only system every sandbox starts from."""
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in _ROOT_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def _outside_usr(paths: Sequence[Path | str]) -> list[str]:
    """Paths not already visible (under /usr or /etc), each once."""
    kept = [str(p) for p in paths if not str(p).startswith(("/usr/", "/etc/"))]
    return list(dict.fromkeys(kept))


def interpreter_binds(base_python: str) -> list[str]:
    """What a venv made from `base_python` needs bound besides itself: the interpreter's prefix.

    Called by the platform on an interpreter it chose itself, before any model code ran, and
    recorded with the environment (PublishedTag.sandbox_binds): never derived later from the
    venv's pyvenv.cfg or bin/python, which the model's install step could rewrite to have
    the platform bind anything into its sandbox.
    """
    prefix = Path(base_python).resolve().parent.parent
    return [] if str(prefix) in ("/", "/usr") or str(prefix).startswith("/usr/") else [str(prefix)]


def environment_paths(python: str, binds: Sequence[str] = ()) -> list[Path]:
    """What a sandbox of a model environment reads: the venv (from the platform's own record
    of where it made it) and the binds recorded when it was made."""
    return [Path(python).parent.parent, *(Path(b) for b in binds)]


@functools.cache
def bwrap_problem(uid: int | None) -> str | None:
    """Why bubblewrap cannot make a sandbox here (as `uid`), or None: probed once per process."""
    if shutil.which("bwrap") is None:
        return "the `bwrap` command is not installed"
    argv = [*_system(), "--unshare-user", "--disable-userns", "--", "true"]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=20,
            preexec_fn=switch_user(uid) if uid is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probing it failed: {exc}"
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip() or f"it exited with {done.returncode}"
    return None


def switch_user(uid: int):
    """A preexec function: drop every group and become `uid` (the model's own user)."""

    def apply() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return apply


def chown_tree(folder: Path, uid: int) -> None:
    os.chown(folder, uid, uid)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)


def kill_uid(uid: int) -> int:
    """SIGKILL every process of `uid` (a uid only model code uses); returns how many."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def closed_folder(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot traverse (no o+x), if any."""
    return next((f for f in reversed(path.parents) if not os.stat(f).st_mode & 0o001), None)


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than its owner can reach and run `path` (every folder o+x)."""
    real = path.resolve()
    return closed_folder(real) is None and bool(os.stat(real).st_mode & 0o005)


def model_interpreter(version: str, preferred: str) -> str:
    """The Python model virtualenvs are made from: one the model's uid can run.

    The platform's own interpreter may live where only root can reach it (pyenv under /root);
    then the system's python of the same major.minor serves. CS_MODEL_PYTHON wins.
    """
    from prefect_cs.core.settings import get_settings

    chosen = get_settings().model_python
    if chosen:
        return str(chosen)
    if get_settings().sandbox != "bwrap" or os.geteuid() != 0:
        return preferred
    for candidate in (preferred, f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"):
        if Path(candidate).exists() and reachable_by_others(Path(candidate)):
            return candidate
    raise NotConfigured(
        f"no Python {version} that the model user can run: {preferred} is not reachable by other"
        f" users. Install python{version} system-wide or set CS_MODEL_PYTHON to one"
    )
