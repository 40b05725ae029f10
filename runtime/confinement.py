"""One model process's bounds, set up before it starts and enforced and read from outside it.

The sandbox (sandbox.py) decides what model code can see; this module decides how much it
can use and what it can do with the kernel, for every piece of model code the process tier
runs (the simulate child, a warm inputs process, install.sh, the cs-config install and the
model's own tests):

- a cgroup of its own (cgroups.py): memory of every process it starts, tmpfs and /dev/shm
  pages included, at the declared memory x memory_limit_factor; pids at the model's `pids`;
  CPU at its declared cpus. What it used (peak memory, CPU-seconds) is read from the cgroup,
  which the model cannot touch, and whatever it left running is killed through the cgroup;
- a work folder of its own that is a size-limited tmpfs (the model's `disk`), mounted by the
  platform, so a disk fill stops there and its pages count as the model's memory;
- outbound network, where it is given at all, through slirp4netns in the sandbox's own
  network namespace without the host's loopback (usernet.py), never the host's namespace;
- bubblewrap's `--disable-userns` and a seccomp filter (seccomp.py) refusing namespaces,
  mounts, ptrace, bpf, keyctl and the like.

All of it needs root (the process tier's supported mode: the model runs as its own uid). As
another user the platform can neither switch uids nor make cgroups and mounts; the sandbox
then still confines what the model sees, and every call logs that its resources are unbounded.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prefect_cs.core.errors import NotConfigured
from prefect_cs.runtime import cgroups
from prefect_cs.runtime.sandbox import Sandbox, switch_user

logger = logging.getLogger("prefect_cs.sandbox")
UNBOUNDED = (
    "model code runs without kernel bounds (memory, pids, CPU, disk): the platform is not root"
    " here; run the process tier's worker as root for them"
)


_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cs-model-spawner")
"""The thread every model process is started from. A sandboxed process dies with SIGKILL when
the thread that started it ends (bubblewrap's --die-with-parent is the kernel's parent-death
signal, which follows the starting thread): a warm process started from a task worker's short-
lived thread died mid-call once that thread ended. This thread lives as long as the platform."""


@dataclass(frozen=True)
class Bounds:
    """What one model call may use; None: not bounded by this call (the model config says)."""

    memory_mib: int | None = None
    pids: int | None = None
    cpus: float | None = None
    disk_mib: int | None = None

    def describe(self) -> str:
        parts = [
            f"memory {self.memory_mib:,} MiB" if self.memory_mib else "",
            f"{self.pids} processes" if self.pids else "",
            f"{self.cpus:g} CPUs" if self.cpus else "",
            f"disk {self.disk_mib:,} MiB" if self.disk_mib else "",
        ]
        return ", ".join(p for p in parts if p) or "none"


class Confinement:
    """The bounds of one model process (or a warm one's life): use as a context manager.

    `work` is the call's private work folder (a size-limited tmpfs when enforced); `wrap` gives
    the sandboxed argv, `popen` starts it inside the cgroup, `limit_hit` names a bound it hit;
    leaving the context kills everything left in the cgroup and removes the folder.
    """

    measure_without_bounds = False
    """True only to measure what the bounds cost (benchmarks/sandbox_overhead.py)."""

    def __init__(self, sandbox: Sandbox, name: str, bounds: Bounds, network: bool = False):
        self.sandbox, self.name, self.bounds, self.network = sandbox, name, bounds, network
        root = os.geteuid() == 0
        self.enforced = sandbox.mode == "bwrap" and root and not self.measure_without_bounds
        self.work = Path()
        self.shm: Path | None = None
        self.cgroup: cgroups.CallCgroup | None = None
        self._mounted = False
        self._net = None
        self._fds: list[int] = []

    # ---- set up and tear down ------------------------------------------------------

    def __enter__(self) -> Confinement:
        self.work = Path(tempfile.mkdtemp(prefix=f"cs-{self.name}-"))
        try:
            if self.enforced:
                self._enforce()
            elif self.sandbox.mode == "bwrap":
                logger.warning(UNBOUNDED)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _enforce(self) -> None:
        problem = cgroups.cgroups_problem()
        if problem:
            raise NotConfigured(
                f"model code is run only inside kernel bounds, and per-call cgroups cannot be"
                f" made here: {problem}"
            )
        self.cgroup = cgroups.CallCgroup.create(self.name, self._limits())
        if self.bounds.disk_mib:
            mount_tmpfs(self.work, self.bounds.disk_mib)
            self._mounted = True
        # /dev/shm of its own, on the platform's side of the sandbox: the platform empties it
        # between a warm process's calls without walking the model's filesystem.
        self.shm = Path(tempfile.mkdtemp(prefix=f"cs-{self.name}-shm-"))
        size = self.bounds.disk_mib or self.bounds.memory_mib or 1024
        mount_tmpfs(self.shm, size, mode="1777")

    def _limits(self) -> cgroups.Limits:
        memory = self.bounds.memory_mib * 1024 * 1024 if self.bounds.memory_mib else None
        return cgroups.Limits(memory_bytes=memory, pids=self.bounds.pids, cpus=self.bounds.cpus)

    def close(self) -> None:
        """Kill what is left, free the work folder, remove the cgroup (idempotent)."""
        if self.cgroup is not None:
            self.cgroup.kill_all()
        if self._net is not None:
            self._net.close()
            self._net = None
        self._close_fds()
        if self._mounted:
            unmount(self.work)
            self._mounted = False
        if self.shm is not None:
            unmount(self.shm)
            shutil.rmtree(self.shm, ignore_errors=True)
            self.shm = None
        if self.work != Path():
            shutil.rmtree(self.work, ignore_errors=True)
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None

    def _close_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    # ---- starting the model ----------------------------------------------------------

    def wrap(
        self,
        argv: Sequence[str],
        *,
        readable: Sequence[Path | str] = (),
        writable: Sequence[Path | str] = (),
        cwd: Path | None = None,
        as_pid_1: bool = False,
    ) -> list[str]:
        """argv inside the sandbox, with this confinement's namespaces, filter and network."""
        return self.sandbox.wrap(
            argv,
            work=self.work,
            readable=readable,
            writable=writable,
            as_pid_1=as_pid_1,
            chdir=cwd,
            extra=self._bwrap_extra(),
        )

    def _bwrap_extra(self) -> list[str]:
        if self.sandbox.mode != "bwrap":
            return []
        extra = ["--unshare-user", "--disable-userns"]
        if not self.enforced:
            return extra
        from prefect_cs.runtime.seccomp import seccomp_fd

        fd = seccomp_fd()
        self._fds.append(fd)
        extra += ["--seccomp", str(fd)]
        if self.shm is not None:
            extra += ["--bind", str(self.shm), "/dev/shm"]
        if self.network:
            from prefect_cs.runtime.usernet import UserNet

            self._net = UserNet()
            extra += self._net.bwrap_args()
        return extra

    def popen(
        self, argv: list[str], *, memory_rlimit_mib: int | None = None, **kwargs
    ) -> subprocess.Popen:
        """Start the wrapped argv in the cgroup, as the model's uid; release its network."""
        pass_fds = tuple(kwargs.pop("pass_fds", ())) + tuple(self._fds)
        if self._net is not None:
            pass_fds += tuple(self._net.pass_fds())
        proc = _SPAWNER.submit(
            subprocess.Popen,
            argv,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=self._preexec(memory_rlimit_mib),
            **kwargs,
        ).result()
        self._close_fds()
        if self._net is not None:
            try:
                self._net.attach(proc.pid)
            except BaseException:
                # bubblewrap's child is in its process group until released (usernet.py)
                kill_group(proc.pid)
                proc.wait()
                self._net.close()
                raise
        return proc

    def _preexec(self, memory_rlimit_mib: int | None) -> Callable[[], None]:
        """In the child before exec: OOM score, cgroup, (without a cgroup) an address-space
        limit, then the model's uid — so bubblewrap's user namespace belongs to that uid."""
        join = self.cgroup.join if self.cgroup is not None else None
        rlimit = None if join else memory_rlimit_mib
        run_as = self.sandbox.run_as()

        def apply() -> None:
            raise_oom_score()
            if join is not None:
                join()
            if rlimit:
                import resource

                limit = rlimit * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            if run_as is not None:
                switch_user(run_as)()

        return apply

    # ---- after the model ---------------------------------------------------------------

    def oom_killed(self) -> bool:
        """Whether the kernel has killed one of the call's processes for its memory."""
        return self.cgroup is not None and self.cgroup.usage().oom_killed

    def usage(self) -> cgroups.CgroupUsage | None:
        return self.cgroup.usage() if self.cgroup is not None else None

    def limit_hit(self, usage: cgroups.CgroupUsage | None = None) -> str | None:
        """The bound the model ran into, named with its figure and the model-config field."""
        usage = usage or self.usage()
        if usage is None:
            return None
        if usage.oom_killed:
            return (
                f"the model used more than its memory limit of {self.bounds.memory_mib:,} MiB"
                " (all its processes, and the files in its work folder and /dev/shm, count) and"
                " was killed by the kernel: raise `memory` (or `memory_limit_factor`) in the"
                " model config"
            )
        if usage.pids_limit_hit:
            return (
                f"the model tried to run more than {self.bounds.pids} processes and threads at"
                " once (the kernel refused more): raise `pids` in the model config"
            )
        if self._mounted and disk_full(self.work):
            return (
                f"the model filled its writable disk of {self.bounds.disk_mib:,} MiB (its work"
                " folder): raise `disk` in the model config"
            )
        return None

    def kill_all(self, keep: Sequence[int] = ()) -> int:
        """Kill every process of this confinement but `keep` (a warm zygote between calls)."""
        return self.cgroup.kill_all(keep=keep) if self.cgroup is not None else 0


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def raise_oom_score() -> None:
    """When memory runs out, the kernel must kill the model, not the flow that reports it:
    raising one's own OOM score needs no privilege (done before a uid switch)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as score:
            score.write("1000")
    except OSError:
        pass


def mount_tmpfs(folder: Path, size_mib: int, mode: str = "0700") -> None:
    """A size-limited tmpfs on `folder`: the call's whole writable disk (its pages are charged
    to the memory cgroup of whoever writes them: the model's)."""
    options = f"size={size_mib}m,mode={mode},nosuid,nodev"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, f"cs-work-{uuid.uuid4().hex[:8]}", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise NotConfigured(
            f"could not mount the model's work folder as a tmpfs of {size_mib} MiB:"
            f" {done.stderr.strip() or done.returncode}. The process tier's worker must run as"
            " root with mount rights"
        )


def unmount(folder: Path) -> None:
    """Lazy, so a process still holding the folder cannot keep the mount (and its pages)."""
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def disk_full(folder: Path) -> bool:
    """Whether a tmpfs is (all but) full: less than 1 MiB or 1% left."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    free, total = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
    return total > 0 and free < max(1 << 20, total // 100)
