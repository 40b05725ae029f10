"""Each model call in a cgroup of its own: limits the kernel enforces on the call's whole
process tree, and figures the model cannot hide.

Without it a call is bounded per process (RLIMIT_AS) and measured by wait4 (usage.py): a model
that forks four workers may use four times its memory, pages it writes to a tmpfs or /dev/shm
are nobody's, a fork bomb is stopped only by the uid's process limit, and the peak is that of
the largest single process. A cgroup bounds and counts the sum, whatever the model does:

- memory: one limit for every process of the call, tmpfs and /dev/shm pages included (the
  kernel charges them to the cgroup of the process that wrote them); no escape to swap; past
  the limit the kernel OOM-kills inside the group and counts it.
- pids: at most N tasks at once (threads count too); a fork past it fails with EAGAIN, counted.
- cpu: a CFS quota of `cpus` per 100 ms period; CPU time counted for every process, waited
  for or not.
- every process in it can be found and killed, whatever session or pid namespace it made.

A call's group is `cs-model/<name>-<random>` under the cgroup the worker itself is in, so the
limits of the worker's container or service still bound every call together. On cgroup v1
that is one directory per controller (memory, pids, cpu, cpuacct, and freezer when mounted);
on v2 it is one node, made next to the worker's own cgroup (the worker must live in a leaf:
v2 refuses controllers for the children of a cgroup that holds processes).

Which one: v2 when the worker's cgroup2 node offers memory, pids and cpu (cgroup.controllers),
else v1 per controller. Only v1 could be tested where this was written (kernel 6.18, v1
controllers, an empty cgroup2 at /sys/fs/cgroup/unified): the v2 join, freeze, cgroup.kill,
rmdir and cpu.stat ran on that controller-less cgroup2; the v2 limit and event files
(memory.max, memory.swap.max, memory.peak, memory.events, pids.max, pids.events, cpu.max)
are written and read as the kernel's cgroup-v2 documentation describes, untested.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect_cs.core.errors import NotConfigured

PARENT = "cs-model"  # every call's group is made under this one, itself never removed
PERIOD_US = 100_000  # the CFS period: a quota of `cpus` x 100 ms per 100 ms
MIN_QUOTA_US = 1_000  # the kernel's smallest quota
V1_NEEDED = ("memory", "pids", "cpu", "cpuacct")
V1_OPTIONAL = ("freezer",)  # freezes a forking tree for the kill; without it the kill repeats
V2_NEEDED = ("memory", "pids", "cpu")
KILL_SECONDS = 10.0  # kill_all repeats until the group is empty (all exited) or this passes
FREEZE_SECONDS = 1.0  # for a freeze to take hold before the kill
MIB = 1024 * 1024
FIX = (
    "run the worker as root with a writable cgroup tree: cgroup v2 with memory, pids and cpu"
    " offered to the worker's cgroup (and the worker in a leaf cgroup of its own, e.g. systemd"
    " Delegate=yes), or cgroup v1 with memory, pids, cpu and cpuacct mounted read-write"
    " (a container needs its cgroup tree mounted read-write)"
)
logger = logging.getLogger("prefect_cs.cgroups")


@dataclass(frozen=True)
class Limits:
    """What one call may use; None leaves that resource unlimited (still counted).

    memory_bytes: every process of the call together, tmpfs and /dev/shm pages included.
    pids: tasks at once (processes and their threads). cpus: CPUs' worth of time (CFS quota).
    """

    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "pids", "cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Limits.{name} must be positive or None, not {value!r}")


@dataclass(frozen=True)
class CgroupUsage:
    """What the kernel counted for a call's group: its whole tree, every process it ever held."""

    peak_memory_mib: float
    cpu_seconds: float
    oom_killed: bool
    pids_limit_hit: bool


@dataclass(frozen=True)
class Hierarchy:
    """Where the current process's cgroups are. v1: controller -> its directory; v2: "" -> the
    node under which call groups are made. enable: v2 controllers to turn on for children."""

    version: int
    dirs: Mapping[str, Path]
    enable: tuple[str, ...] = ()


class CallCgroup:
    """One model call's cgroup: `join` it in the child before exec, read `usage`, `close` it."""

    def __init__(self, version: int, dirs: Mapping[str, Path], limits: Limits) -> None:
        self.version = version
        self.limits = limits
        self._by_controller = dict(dirs)
        self.paths = tuple(dict.fromkeys(dirs.values()))  # co-mounted controllers share one
        self._procs = tuple(os.fsencode(path / "cgroup.procs") for path in self.paths)
        self._final: CgroupUsage | None = None
        self._closed = False

    @classmethod
    def create(cls, name: str, limits: Limits) -> CallCgroup:
        """A new group for one call with these limits; NotConfigured (naming the fix) if
        cgroups cannot be made here."""
        problem = cgroups_problem()
        if problem:
            raise NotConfigured(f"per-call cgroups cannot be made here: {problem}. To fix: {FIX}")
        try:
            return cls.make(hierarchy(), name, limits)
        except OSError as exc:
            raise NotConfigured(
                f"the model call's cgroup could not be made: {_oserror(exc)}. To fix: {FIX}"
            ) from exc

    @classmethod
    def make(cls, where: Hierarchy, name: str, limits: Limits) -> CallCgroup:
        """The group under `where` (create() finds it; tests pass their own); OSError if the
        kernel refuses. Whatever was made is removed again on failure."""
        leaf = f"{_clean(name)}-{secrets.token_hex(4)}"
        if where.version == 2:
            base = where.dirs[""]
            _enable_v2(base, where.enable)
            (base / PARENT).mkdir(exist_ok=True)
            _enable_v2(base / PARENT, where.enable)
            dirs = {"": base / PARENT / leaf}
        else:
            dirs = {controller: path / PARENT / leaf for controller, path in where.dirs.items()}
        group = cls(where.version, dirs, limits)
        try:
            for path in group.paths:
                path.mkdir(parents=True)
            group._apply()
        except BaseException:
            group.close()
            raise
        return group

    def join(self) -> None:
        """Move the calling process into the group: for a subprocess's preexec_fn, as root and
        before any uid switch. Only os.open/os.write, so it is safe between fork and exec."""
        pid = str(os.getpid()).encode()
        for procs in self._procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        """The host pids in the group now (exited processes are not listed, even unreaped)."""
        found: set[int] = set()
        for path in self.paths:
            try:
                found.update(int(pid) for pid in (path / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                continue
        return sorted(found)

    def memory_current(self) -> int:
        """Bytes the group holds now (an app's idle memory: benchmarks/interactive.py)."""
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return _read_int(self._file("memory", name))

    def usage(self) -> CgroupUsage:
        """What the group's processes used so far; after close, what they had used then."""
        if self._closed and self._final is not None:
            return self._final
        return self._usage_v2() if self.version == 2 else self._usage_v1()

    def kill_all(self, keep: Collection[int] = ()) -> int:
        """SIGKILL every process in the group but `keep`, again until none is left (a fork
        racing the kill is caught: the group is frozen for each round when it can be).
        Returns how many processes were signalled."""
        keep, killed = set(keep), set()
        deadline = time.monotonic() + KILL_SECONDS
        while True:
            members = self.pids()
            victims = [pid for pid in members if pid not in keep]
            if not victims:
                break
            if time.monotonic() > deadline:
                logger.warning("cgroup %s: %d processes outlived the kill", self, len(victims))
                break
            frozen = os.getpid() not in members and self._freeze()  # never freeze the caller
            try:
                killed.update(self._kill_round(keep))
            finally:
                if frozen:
                    self._thaw()
            time.sleep(0.01)
        return len(killed)

    def close(self) -> None:
        """Kill what is left (kill_all returns once the group is empty, or after KILL_SECONDS),
        remove the group's directories. An exited process its parent has not reaped yet does
        not hold a group (the caller may still wait4 its child after close). Idempotent; a
        group someone already removed is not an error. A directory the kernel still refuses to
        remove is logged, and the next close tries again."""
        if self._closed:
            return
        self.kill_all()
        if all(path.is_dir() for path in self.paths):
            self._final = self.usage()
        left = [path for path in self.paths if not _rmdir(path)]
        if left:
            logger.warning("cgroup %s could not be removed: %s", self, ", ".join(map(str, left)))
        self._closed = not left

    def describe_limit_hit(
        self, usage: CgroupUsage, fields: Mapping[str, str] | None = None
    ) -> str | None:
        """The limit the call ran into, as one sentence for the model's author, or None.
        fields: how a limit was derived, by name ("memory", "pids"), shown in parentheses,
        e.g. {"memory": "memory 1Gi x memory_limit_factor"}."""
        fields = fields or {}

        def origin(name: str) -> str:
            return f" ({fields[name]})" if fields.get(name) else ""

        if usage.oom_killed and self.limits.memory_bytes:
            mib = self.limits.memory_bytes / MIB
            return (
                f"the model used more than its memory limit of {mib:,.0f} MiB{origin('memory')}:"
                " raise `memory` in the model config"
            )
        if usage.pids_limit_hit and self.limits.pids:
            return (
                f"the model started more than {self.limits.pids:,} processes (or threads) at"
                f" once{origin('pids')}: raise `pids` in the model config"
            )
        return None

    def __enter__(self) -> CallCgroup:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __str__(self) -> str:
        return self.paths[0].name if self.paths else "?"

    def _file(self, controller: str, name: str) -> Path:
        return self._by_controller["" if self.version == 2 else controller] / name

    def _apply(self) -> None:
        """Write the limits; on v1 no swap for the group (memsw = memory), on v2 no swap at all."""
        limits, v2 = self.limits, self.version == 2
        if v2 and (swap := self._file("memory", "memory.swap.max")).exists():
            _write(swap, 0)
        if limits.memory_bytes is not None:
            if v2:
                _write(self._file("memory", "memory.max"), limits.memory_bytes)
            else:
                self._apply_memory_v1(limits.memory_bytes)
        if limits.pids is not None:
            _write(self._file("pids", "pids.max"), limits.pids)
        if limits.cpus is not None:
            quota = max(MIN_QUOTA_US, round(limits.cpus * PERIOD_US))
            if v2:
                _write(self._file("cpu", "cpu.max"), f"{quota} {PERIOD_US}")
            else:
                _write(self._file("cpu", "cpu.cfs_period_us"), PERIOD_US)
                _write(self._file("cpu", "cpu.cfs_quota_us"), quota)

    def _apply_memory_v1(self, limit: int) -> None:
        _write(self._file("memory", "memory.limit_in_bytes"), limit)
        memsw = self._file(
            "memory", "memory.memsw.limit_in_bytes"
        )  # absent without swap accounting
        if memsw.exists():
            _write(memsw, limit)  # after the memory limit: memsw may never be below it
        try:
            _write(self._file("memory", "memory.swappiness"), 0)
        except OSError:
            pass  # some kernels refuse it for groups; memsw already keeps the group off swap

    def _usage_v1(self) -> CgroupUsage:
        peak = _read_int(self._file("memory", "memory.max_usage_in_bytes"))
        control = _read_keyed(self._file("memory", "memory.oom_control"))
        if "oom_kill" in control:  # kernels >= 4.13
            oom = control["oom_kill"] > 0
        else:  # older: the group failed a charge with its peak at the limit
            failed = _read_int(self._file("memory", "memory.failcnt")) + _read_int(
                self._file("memory", "memory.memsw.failcnt")
            )
            limit = self.limits.memory_bytes
            oom = bool(failed and limit and peak >= limit - MIB)
        return CgroupUsage(
            peak_memory_mib=round(peak / MIB, 1),
            cpu_seconds=round(_read_int(self._file("cpuacct", "cpuacct.usage")) / 1e9, 3),
            oom_killed=oom,
            pids_limit_hit=_read_keyed(self._file("pids", "pids.events")).get("max", 0) > 0,
        )

    def _usage_v2(self) -> CgroupUsage:
        peak_file = self._file("memory", "memory.peak")  # kernels >= 5.19
        if not peak_file.exists():
            peak_file = self._file("memory", "memory.current")
        cpu = _read_keyed(self._file("cpu", "cpu.stat")).get("usage_usec", 0)
        return CgroupUsage(
            peak_memory_mib=round(_read_int(peak_file) / MIB, 1),
            cpu_seconds=round(cpu / 1e6, 3),
            oom_killed=_read_keyed(self._file("memory", "memory.events")).get("oom_kill", 0) > 0,
            pids_limit_hit=_read_keyed(self._file("pids", "pids.events")).get("max", 0) > 0,
        )

    def _kill_round(self, keep: set[int]) -> list[int]:
        """One SIGKILL to each process but `keep` (v2 without keep: cgroup.kill, all at once)."""
        victims = [pid for pid in self.pids() if pid not in keep]
        kill_file = self._file("", "cgroup.kill") if self.version == 2 else None
        if kill_file is not None and not keep and kill_file.exists():
            _write(kill_file, 1)
            return victims
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return victims

    def _freeze(self) -> bool:
        """Freeze the group (v1 freezer, v2 cgroup.freeze) and wait for it, bounded; whether a
        freeze was asked for (a frozen v1 process dies of its SIGKILL when thawed)."""
        if self.version == 2:
            state, want, done = self._file("", "cgroup.freeze"), "1", ("frozen", 1)
        elif "freezer" in self._by_controller:
            state, want, done = self._file("freezer", "freezer.state"), "FROZEN", None
        else:
            return False
        try:
            _write(state, want)
        except OSError:
            return False
        deadline = time.monotonic() + FREEZE_SECONDS
        while time.monotonic() < deadline and not self._frozen(state, done):
            time.sleep(0.005)
        return True

    def _frozen(self, state: Path, done: tuple[str, int] | None) -> bool:
        try:
            if done is None:
                return state.read_text().strip() == "FROZEN"
            return _read_keyed(state.with_name("cgroup.events")).get(done[0]) == done[1]
        except FileNotFoundError:
            return True

    def _thaw(self) -> None:
        if self.version == 2:
            state, value = self._file("", "cgroup.freeze"), "0"
        else:
            state, value = self._file("freezer", "freezer.state"), "THAWED"
        try:
            _write(state, value)
        except FileNotFoundError:
            pass


ENGINE_PARENT = "cs-docker-calls"


def engine_group(name: str) -> tuple[CallCgroup, str] | None:
    """A group with no limits for a container engine's `cgroup_parent` (cgroupfs driver, cgroup
    v1), and that path. The engine makes the container's own group under it, so the group's
    hierarchical counters (peak memory, CPU time) hold what the container used even after the
    engine removed the container's group. One relative path in every controller (the engine
    takes one), under this process's memory group; None where that cannot be (v2: not yet)."""
    try:
        where, own = hierarchy(), _own_paths()
    except (NotConfigured, OSError):
        return None
    mounts = {point: root for root, point, fstype, _ in _mounts() if fstype == "cgroup"}
    if where.version != 1 or "memory" not in own:
        return None
    relative = f"{own['memory'].rstrip('/')}/{ENGINE_PARENT}/{_clean(name)}-{secrets.token_hex(4)}"
    dirs = {}
    for controller in V1_NEEDED:
        point = next((pt for pt in mounts if pt.name == controller), None)
        if point is None or mounts[point] != "/":
            return None
        dirs[controller] = point / relative.lstrip("/")
    group = CallCgroup(1, dirs, Limits())
    try:
        for path in group.paths:
            path.mkdir(parents=True)
    except OSError:
        group.close()
        return None
    return group, relative


def remove_engine_leftovers(parent: str) -> None:
    """The empty groups an engine made under `parent` in controllers the platform does not
    manage (devices, blkio, …): removed deepest first, so nothing is left behind per call."""
    for _, point, _, _ in _mounts():  # v1 controllers and a hybrid host's unified tree
        base = point / parent.lstrip("/")
        if not base.is_dir():
            continue
        for folder in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir():
                _rmdir(folder)
        _rmdir(base)


@functools.cache
def cgroups_problem() -> str | None:
    """Why per-call cgroups cannot be made here (not root, controllers missing, read-only), or
    None: probed once per process by making and removing a group."""
    try:
        where = hierarchy()
    except NotConfigured as exc:
        return str(exc)
    try:
        CallCgroup.make(where, "probe", Limits(64 * MIB, 16, 0.5)).close()
    except (OSError, NotConfigured) as exc:
        reason = _oserror(exc) if isinstance(exc, OSError) else str(exc)
        if os.geteuid() != 0:
            reason += f" (the worker runs as uid {os.geteuid()}, not root)"
        return reason
    return None


def hierarchy() -> Hierarchy:
    """The current process's cgroups: v2 if its node offers memory, pids and cpu, else v1 per
    controller; NotConfigured (naming what is missing) if neither."""
    mounts, own = _mounts(), _own_paths()
    found = _v2(mounts, own) or _v1(mounts, own)
    if found is None:
        raise NotConfigured("no cgroup v2 or v1 hierarchy is mounted (/proc/self/mountinfo)")
    if found.version == 1:
        missing = [name for name in V1_NEEDED if name not in found.dirs]
        if missing:
            raise NotConfigured(
                "the cgroup v2 node offers no memory, pids and cpu, and the cgroup v1"
                f" controllers {', '.join(missing)} are not mounted"
            )
    return found


def _v2(mounts: list[tuple[str, Path, str, set[str]]], own: dict[str, str]) -> Hierarchy | None:
    """The v2 base: the parent of the worker's node (a node with processes may not have
    controller-enabled children), or the node itself if it is the mount's root."""
    for root, point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        node = _inside(point, root, own[""])
        try:
            offered = set((node / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if set(V2_NEEDED) <= offered:
            return Hierarchy(2, {"": node if node == point else node.parent}, V2_NEEDED)
    return None


def _v1(mounts: list[tuple[str, Path, str, set[str]]], own: dict[str, str]) -> Hierarchy | None:
    """Each v1 controller's directory for the current process (cpu and cpuacct may share one)."""
    dirs: dict[str, Path] = {}
    for root, point, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for name in (*V1_NEEDED, *V1_OPTIONAL):
            if name in options and name in own:
                dirs.setdefault(name, _inside(point, root, own[name]))
    return Hierarchy(1, dirs) if dirs else None


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            point = Path(_unescape(fields[4]))
            found.append((_unescape(fields[3]), point, tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """controller -> the current process's cgroup path ("" for v2), from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _inside(point: Path, root: str, own: str) -> Path:
    """The process's cgroup directory under a mount, or the mount point itself when the path is
    not in the mounted tree (a container sees a host path it does not have)."""
    if own == root or own.startswith(root.rstrip("/") + "/"):
        candidate = point / own[len(root) :].lstrip("/")
        if candidate.is_dir():
            return candidate
    return point


def _enable_v2(node: Path, controllers: tuple[str, ...]) -> None:
    """Offer the controllers to the node's children (cgroup.subtree_control)."""
    control = node / "cgroup.subtree_control"
    missing = [name for name in controllers if name not in control.read_text().split()]
    if not missing:
        return
    try:
        _write(control, " ".join(f"+{name}" for name in missing))
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise NotConfigured(
            f"cgroup v2 will not enable {', '.join(missing)} under {node}: it holds processes."
            f" Start the worker in a leaf cgroup of its own (e.g. {node}/worker), so that"
            " model cgroups can be made next to it"
        ) from exc


def _write(path: Path, value: object) -> None:
    """One write of the value (the kernel takes a cgroup file's value per write); an OSError
    names the file."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _read_int(path: Path) -> int:
    """An integer file's value; 0 when the kernel does not have the file."""
    try:
        return int(path.read_text().split()[0])
    except FileNotFoundError:
        return 0


def _read_keyed(path: Path) -> dict[str, int]:
    """A "key value" per line file (memory.events, pids.events, cpu.stat); {} if absent."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    pairs = (line.split() for line in lines)
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].isdigit()}


def _rmdir(path: Path) -> bool:
    """Remove an emptied group directory; whether it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:48] or "call"


def _unescape(field: str) -> str:
    """mountinfo writes spaces and the like as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def _oserror(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
