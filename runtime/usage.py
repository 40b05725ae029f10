"""What one model call cost: CPU-seconds and peak memory, measured by the platform.

Compute Studio bills users by the compute they use, so the figures come from the
kernel, outside the sandbox, never from the model: `os.wait4` on the call's child
returns the rusage of that process and of every descendant it waited for. The
sandbox is arranged so that this is the whole tree:

- in bubblewrap the sandbox's pid 1 is the platform's own small init (INIT_SOURCE,
  `--as-pid-1`), which runs the model, then kills and waits for whatever it left running:
  bubblewrap waits for that init, so the whole tree reaches our wait4. (Measured here: with
  bubblewrap's own init, the caller saw 0.01 CPU-seconds of a model that burnt 1.3, since
  bubblewrap exits without waiting for its init; with the model itself as pid 1, processes it
  left running were reaped by the kernel's namespace clean-up, which counts nothing.)
- at a time limit the init is told to end the model (`stop`) before bubblewrap is killed.
- `uid` and `none` modes count the model and every process it waited for; a process
  it left running is killed at the end of the call but not counted.

Where the call has a cgroup (confinement.py: the process tier as root), both figures come
from it instead: CPU-seconds of every process that ran in it, and the peak of their memory
together (tmpfs and /dev/shm pages included). Without one, peak memory is ru_maxrss: the
largest resident set of any one process of the tree, not their sum.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_SECONDS = 1.0  # for the sandbox's init to end and reap the model once told to

# The sandbox's pid 1 (bubblewrap --as-pid-1), run by the model's own interpreter from argv so
# that no platform file needs to be visible in the sandbox. It runs the model, and when the
# model's process ends (or the platform sends SIGTERM at the time limit) kills every process
# left in the namespace and waits for each: whatever is reaped is counted, and the kernel's
# own clean-up at a pid 1's exit reaps uncounted. Signals from inside the namespace cannot
# kill a pid 1 (only SIGTERM reaches it, and only ends the run early), and it is made
# non-dumpable, so the model cannot trace it either.
INIT_SOURCE = """
import os, signal, sys
if os.getpid() != 1:  # the sweep below kills every process it sees: only ever in its own namespace
    sys.exit("the platform's sandbox init runs only as pid 1 of its own pid namespace")
try:  # PR_SET_DUMPABLE 0: not traceable by the model's uid
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
except (ImportError, OSError, AttributeError):  # a Python without ctypes still runs the model
    pass
def sweep(*_):
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
signal.signal(signal.SIGTERM, sweep)
model = os.fork()
if model == 0:
    os.execv(sys.argv[1], sys.argv[1:])
code = 1
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == model:
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    if pid == model or model is None:
        model = None
        sweep()
sys.exit(code)
"""


def measured(argv: list[str]) -> list[str]:
    """argv under the platform's init (INIT_SOURCE), for the sandbox's pid 1."""
    return [argv[0], "-I", "-S", "-c", INIT_SOURCE, *argv]


@dataclass(frozen=True)
class Usage:
    """A call's CPU time (user + system) and the peak resident memory of its largest process."""

    cpu_seconds: float = 0.0
    peak_memory_mib: float = 0.0

    @classmethod
    def of(cls, rusage: resource.struct_rusage) -> Usage:
        cpu = rusage.ru_utime + rusage.ru_stime
        return cls(round(cpu, 3), round(rusage.ru_maxrss / 1024, 1))  # ru_maxrss is in KiB

    @classmethod
    def of_cgroup(cls, counted) -> Usage:
        """The call's cgroup's own count (confinement.py): every process, tmpfs pages included,
        with the tree's true peak rather than its largest process's."""
        return cls(round(counted.cpu_seconds, 3), round(counted.peak_memory_mib, 1))

    def meta(self) -> dict[str, float]:
        """The keys added to a result's meta, next to task_times."""
        return {"cpu_seconds": self.cpu_seconds, "peak_memory_mib": self.peak_memory_mib}


def exited(proc: subprocess.Popen) -> bool:
    """Whether the child has ended, without reaping it: only `reap` may, to read its rusage
    (Popen.poll would reap it and the figures would be lost)."""
    if proc.returncode is not None:
        return True
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, proc.pid, flags) is not None
    except ChildProcessError:
        return True


def wait_exit(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait up to `seconds` for the child to end (not reaping it); whether it did."""
    deadline = time.monotonic() + max(seconds, 0.0)
    while not exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def reap(proc: subprocess.Popen) -> Usage | None:
    """Wait for the child and return what its tree used; sets proc.returncode as Popen would.
    None if the child was already reaped elsewhere (then nothing can be measured)."""
    if proc.returncode is not None:
        return None
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.wait()  # Popen's own answer for a child it cannot wait for
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage.of(rusage)


def stop(proc: subprocess.Popen, inner_first: bool) -> None:
    """Kill the call's processes. inner_first (bubblewrap): first tell the sandbox's init to
    end the model and reap it, and give it a moment, so the figures reach us through bubblewrap
    (killing bubblewrap or the init outright would leave the model's tree to be reaped
    uncounted)."""
    if inner_first and not exited(proc):
        for pid in children(proc.pid):
            _signal(pid, signal.SIGTERM)
        wait_exit(proc, STOP_GRACE_SECONDS)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc: this kernel has no .../children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
