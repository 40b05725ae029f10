"""Outbound network for model code that needs the internet, without the host's network.

A model's install.sh and `internet: true` models need to reach PyPI, GitHub and data sources.
bubblewrap's `--share-net` would give them that by leaving them in the host's network
namespace, and with it every service listening on the host's loopback: the Prefect API, the
cluster API, Redis, the local docker registry. Instead the sandbox keeps a network namespace of
its own (`--unshare-all`) and slirp4netns, a user-mode network stack, gives it one interface
(tap0, 10.0.2.100) whose packets it turns into ordinary connections made from the host:

- `--disable-host-loopback`: 10.0.2.2, slirp's name for the host, does not lead to the host's
  127.0.0.1; the sandbox's own 127.0.0.1 is its own loopback.
- DNS goes to slirp's resolver, 10.0.2.3, which forwards to the host's (/etc/resolv.conf in the
  sandbox is replaced by one naming it).
- slirp4netns runs with its own sandbox (`--enable-sandbox`: a mount namespace of its own, every
  capability dropped but CAP_NET_BIND_SERVICE) and seccomp filter (`--enable-seccomp`): it parses
  packets the model writes.
- `--exit-fd`: slirp4netns ends when the platform closes it, or dies: it never outlives us.

- a fence inside the sandbox's namespace, set before the model starts (`fence`): `unreachable`
  routes for the private, shared and link-local ranges (the LAN, a container bridge, a cloud's
  metadata address 169.254.169.254) and for every address of the host itself, so a service
  listening on 0.0.0.0 is not reachable at the host's own address either. slirp's own network
  (10.0.2.0/24) stays routed by its more specific route. The model cannot lift the fence: it has
  no capability in its namespace.

What it does not stop: anything else the host can reach (the internet, as intended; a proxy or a
mirror on a public address). A package index on a private address needs CS_SANDBOX_OPEN_NETWORKS.

The sequence, for the integrator (runtime/sandbox.py builds bubblewrap's argv):

    net = UserNet()
    argv = ["bwrap", ..., "--ro-bind", "/etc", "/etc", ..., *net.bwrap_args(), ...,
            "--remount-ro", "/", ..., "--", ...]
    proc = subprocess.Popen(argv, pass_fds=net.pass_fds(), ...)   # no --share-net
    try:
        net.attach(proc.pid)       # the sandboxed command starts only after this
        ...                        # the call as before
    finally:
        net.close()                # and kill the sandbox if attach raised

bubblewrap waits (`--block-fd`) before it execs the sandboxed command, and says which process
holds the sandbox's namespaces (`--info-fd`, JSON with "child-pid"); `attach` connects
slirp4netns to that namespace and only then releases the sandbox. bubblewrap binds the sandbox
to its own life (--die-with-parent) only once released: a sandbox whose bubblewrap is killed while
it waits would, when the block fd closes, run its command orphaned (with no network at all, never
the host's). So when attach fails, `close` kills the sandbox it identified, and the caller kills
bubblewrap's process group (bubblewrap's child is in it until released; usage.stop does that).
The one window left: a platform process killed during `attach` (tens of ms) leaves that sandbox
to run its command unsupervised, with no network.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from prefect_cs.core.errors import NotConfigured

SLIRP_DNS = "10.0.2.3"
RESOLV_CONF = f"nameserver {SLIRP_DNS}\n".encode()
MTU = 65520  # slirp4netns's largest: fewer, bigger packets through the user-mode stack
TAP = "tap0"
STOP_SECONDS = 2.0
HOST_RESOLV_CONF = "/etc/resolv.conf"
NS_GET_USERNS = 0xB701  # linux/nsfs.h: _IO(0xb7, 0x1), the user namespace owning a namespace


def resolv_conf_target() -> str:
    """Where the sandbox's resolv.conf must go: /etc/resolv.conf, or the file it links to
    (/run/systemd/resolve/stub-resolv.conf under systemd-resolved): bubblewrap cannot put a
    file on a link whose target the sandbox lacks."""
    return os.path.realpath(HOST_RESOLV_CONF)


def usernet_problem() -> str | None:
    """Why a sandbox cannot get its own outbound network here, or None."""
    if shutil.which("slirp4netns") is None:
        return "the `slirp4netns` command is not installed (`apt-get install slirp4netns`)"
    tun = Path("/dev/net/tun")
    if not tun.exists():
        return "there is no /dev/net/tun for slirp4netns's interface (`modprobe tun`)"
    if os.geteuid() != 0 and not os.access(tun, os.R_OK | os.W_OK):
        return (
            f"this user (uid {os.geteuid()}) cannot open /dev/net/tun: run the platform as root,"
            " or give /dev/net/tun mode 0666 (Debian's default)"
        )
    return None


class UserNet:
    """One sandbox's outbound network: slirp4netns on its own namespace, no host loopback."""

    def __init__(self, timeout: float = 10.0):
        problem = usernet_problem()
        if problem:
            raise NotConfigured(f"model code cannot be given a network of its own: {problem}")
        self.timeout = timeout
        self._info_read, self._info_write = os.pipe()
        self._block_read, self._block_write = os.pipe()
        self._block_read_number = self._block_read  # the child's fd number, once ours is closed
        self._resolv = _sealed_memfd("cs-resolv.conf", RESOLV_CONF)
        self._slirp: subprocess.Popen | None = None
        self._slirp_log = tempfile.TemporaryFile(prefix="cs-slirp4netns-")
        self._exit_write: int | None = None
        self._sandbox: int | None = None  # a pidfd on bubblewrap's child, once known

    def bwrap_args(self) -> list[str]:
        """bubblewrap options, before its "--": after `--ro-bind /etc /etc` (binds apply in
        order: this resolv.conf must land on the bound /etc, not under it) and before
        `--remount-ro /` (where /etc/resolv.conf is a link, as systemd-resolved makes it, the
        file goes where it leads, and bubblewrap makes its folders in the sandbox's root)."""
        return [
            "--info-fd",
            str(self._info_write),
            "--block-fd",
            str(self._block_read),
            "--perms",
            "0444",
            "--ro-bind-data",
            str(self._resolv),
            resolv_conf_target(),
        ]

    def pass_fds(self) -> tuple[int, ...]:
        """The child's ends, for Popen(pass_fds=...)."""
        return (self._info_write, self._block_read, self._resolv)

    def attach(self, proc_pid: int) -> None:
        """After Popen: connect slirp4netns to the sandbox's namespace, then release the sandbox.

        Raises RuntimeError naming what failed (the caller then kills the sandbox). Every wait
        is bounded by `timeout`.
        """
        self._close_child_ends()
        deadline = time.monotonic() + self.timeout
        child = self._child_pid(deadline)
        self._sandbox = _pidfd_of_child(child, proc_pid)
        _wait_blocked(child, self._block_read_number, self._sandbox, deadline)
        netns = _open_netns(child, self._sandbox)
        try:
            ready = self._start_slirp(netns)
            try:
                self._wait_ready(ready, deadline)
            finally:
                os.close(ready)
            fence(netns, deadline)
        finally:
            os.close(netns)
        try:
            os.write(self._block_write, b"1")
        except BrokenPipeError:
            raise RuntimeError("the sandbox ended before its network was ready") from None
        os.close(self._block_write)
        self._block_write = -1

    def close(self) -> None:
        """Stop slirp4netns (terminate, then kill, bounded) and close every fd; idempotent.

        A sandbox never released is killed first: closing the block fd would let bubblewrap go
        on to run the command, and bubblewrap's --die-with-parent only binds it after that point.
        """
        if self._sandbox is not None:
            if self._block_write >= 0:
                _kill(self._sandbox)
            _close(self._sandbox)
            self._sandbox = None
        if self._exit_write is not None:
            _close(self._exit_write)  # slirp4netns ends on its own when this closes
            self._exit_write = None
        if self._slirp is not None:
            _stop(self._slirp)
            self._slirp = None
        self._close_child_ends()
        for name in ("_info_read", "_block_write"):
            _close(getattr(self, name))
            setattr(self, name, -1)
        self._slirp_log.close()

    def __enter__(self) -> UserNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_child_ends(self) -> None:
        for name in ("_info_write", "_block_read", "_resolv"):
            _close(getattr(self, name))
            setattr(self, name, -1)

    def _child_pid(self, deadline: float) -> int:
        """The pid bubblewrap writes to --info-fd (in pieces: read until it parses)."""
        text = b""
        while chunk := _read_before(self._info_read, deadline, "bubblewrap to start the sandbox"):
            text += chunk
            try:
                return int(json.loads(text)["child-pid"])
            except (ValueError, KeyError):
                continue
        raise RuntimeError(
            "bubblewrap ended before it started the sandbox (it said nothing on --info-fd):"
            " its own output says why"
        )

    def _start_slirp(self, netns: int) -> int:
        """Start slirp4netns on the namespace `netns`; returns the fd it signals ready on."""
        ready_read, ready_write = os.pipe()
        exit_read, self._exit_write = os.pipe()
        handed = [ready_write, exit_read]  # slirp4netns's from now on: closed here after Popen
        argv = [
            "slirp4netns",
            "--configure",
            f"--mtu={MTU}",
            "--disable-host-loopback",
            "--enable-seccomp",
            f"--ready-fd={ready_write}",
            f"--exit-fd={exit_read}",
            "--netns-type=path",
        ]
        if os.geteuid() == 0:  # root's own: a mount namespace of its own, capabilities dropped
            argv.append("--enable-sandbox")
        else:  # capabilities over the namespace: join the user namespace owning it
            userns = fcntl.ioctl(netns, NS_GET_USERNS)
            handed.append(userns)
            argv.append(f"--userns-path=/proc/self/fd/{userns}")
        argv += [f"/proc/self/fd/{netns}", TAP]
        try:
            self._slirp = subprocess.Popen(
                argv,
                pass_fds=(*handed, netns),
                stdin=subprocess.DEVNULL,
                stdout=self._slirp_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the worker's group is ours to pass on
            )
        except OSError:
            _close(ready_read)
            raise
        finally:
            for fd in handed:
                _close(fd)
        return ready_read

    def _wait_ready(self, ready: int, deadline: float) -> None:
        """slirp4netns writes "1" once tap0 is up and configured, or ends (then: its output)."""
        if _read_before(ready, deadline, "slirp4netns to configure the sandbox's network") == b"1":
            return
        raise RuntimeError(
            f"slirp4netns could not give the sandbox a network: {self._slirp_output()}"
        )

    def _slirp_output(self) -> str:
        if self._slirp is not None:
            try:
                self._slirp.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self._slirp_log.seek(0)
        lines = self._slirp_log.read()[-2000:].decode(errors="replace").strip().splitlines()
        return " / ".join(line for line in lines if "experimental" not in line) or "no output"


def _read_before(fd: int, deadline: float, waiting_for: str) -> bytes:
    """One read from `fd`, waiting no later than `deadline`; b"" at EOF."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise RuntimeError(f"timed out waiting for {waiting_for}")
    return os.read(fd, 4096)


def _pidfd_of_child(child: int, proc_pid: int) -> int:
    """A pidfd on bubblewrap's child `child`: it names that process even once the number is free."""
    gone = f"the sandbox (process {child}, bubblewrap's child) ended before it got its network"
    if _parent_of(child) != proc_pid:
        raise RuntimeError(gone)
    try:
        pidfd = os.pidfd_open(child)
    except ProcessLookupError:
        raise RuntimeError(gone) from None
    if _parent_of(child) != proc_pid:  # the number was reused between the check and the open
        os.close(pidfd)
        raise RuntimeError(gone)
    return pidfd


def _wait_blocked(child: int, block_fd: int, pidfd: int, deadline: float) -> None:
    """Wait until bubblewrap's child sits in read(block_fd, _, 1): its own setup (the loopback
    it configures over netlink, the mounts) is over. slirp4netns configuring the namespace at
    the same time makes that setup fail now and then ("loopback: Failed RTM_NEWADDR")."""
    path = Path(f"/proc/{child}/syscall")  # "NR arg0 arg1 arg2 ...", or "running"
    while time.monotonic() < deadline:
        try:
            fields = path.read_text().split()
        except FileNotFoundError:
            fields = []
        except OSError:  # not readable here: go on without the wait (the race is rare)
            return
        if len(fields) > 3 and fields[1] == f"{block_fd:#x}" and fields[3] == "0x1":
            return
        if select.select([pidfd], [], [], 0.005)[0]:
            raise RuntimeError(f"the sandbox (process {child}) ended before it got its network")
    raise RuntimeError("timed out waiting for bubblewrap to set up the sandbox")


# Ranges no model reaches, even with the internet: private (RFC 1918), shared (RFC 6598) and
# link-local (a cloud's metadata server) addresses, where a platform's or a LAN's services live.
FENCED_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
)


def fenced_networks() -> list[str]:
    """What `fence` makes unreachable: FENCED_NETWORKS, every address of the host (a service on
    0.0.0.0 answers there), less what the operator opens (CS_SANDBOX_OPEN_NETWORKS)."""
    from prefect_cs.core.settings import get_settings

    opened = set(get_settings().sandbox_open_networks)
    found = [*FENCED_NETWORKS, *(f"{a}/32" for a in host_addresses())]
    return [net for net in dict.fromkeys(found) if net not in opened]


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses but loopback, as `ip` lists them."""
    done = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10
    )
    addresses = [line.split()[3].split("/")[0] for line in done.stdout.splitlines()]
    return [a for a in addresses if not a.startswith("127.")]


def fence(netns: int, deadline: float) -> None:
    """`unreachable` routes in the sandbox's namespace (see the module docstring), set by the
    platform (root, in the namespace) before the sandbox is released."""
    routes = "".join(f"route add unreachable {net}\n" for net in fenced_networks())
    done = subprocess.run(
        ["nsenter", f"--net=/proc/self/fd/{netns}", "ip", "-batch", "-"],
        input=routes,
        pass_fds=(netns,),
        capture_output=True,
        text=True,
        timeout=max(deadline - time.monotonic(), 1.0),
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not fence the sandbox's network: {done.stderr.strip()}")


def _open_netns(child: int, pidfd: int) -> int:
    """An fd on the sandbox's network namespace, checked to be the child's and not ours.

    Held as an fd (slirp4netns joins /proc/self/fd/N): a pid can be reused, an fd cannot change.
    """
    fd = os.open(f"/proc/{child}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if select.select([pidfd], [], [], 0)[0]:  # it ended: the number may be another's now
        os.close(fd)
        raise RuntimeError(f"the sandbox (process {child}) ended before it got its network")
    if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
        os.close(fd)
        raise RuntimeError(
            "the sandbox has the host's network namespace: UserNet needs bubblewrap's"
            " --unshare-all (or --unshare-net) without --share-net"
        )
    return fd


def _parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def _sealed_memfd(name: str, data: bytes) -> int:
    """A read-only-by-seal memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Terminate, then kill, each wait bounded."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
