"""A sandbox's own outbound network (runtime/usernet.py), against real bubblewrap and
slirp4netns: what it reaches, what it no longer reaches, and that no wait can hang.

The sandboxes are bubblewrap's argv as runtime/sandbox.py builds it (bwrap_prefix), with
UserNet's options after it, as the integrator will; each runs as the model's uid (10001, the
platform's way when it is root) and as the test's own user. Each guard is shown against the
same sandbox without it: with `--share-net` the host's loopback answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prefect_cs.core.errors import NotConfigured
from prefect_cs.runtime import usernet
from prefect_cs.runtime.sandbox import DEFAULT_MODEL_UID, bwrap_prefix, switch_user
from prefect_cs.runtime.usernet import UserNet
from prefect_cs.testing.model_code import model_folder

pytestmark = pytest.mark.skipif(
    usernet.usernet_problem() is not None, reason=f"{usernet.usernet_problem()}"
)

PYTHON = "/usr/bin/python3"  # under /usr: visible in every sandbox; has pip
USERS = [
    pytest.param(DEFAULT_MODEL_UID, id="model-uid"),
    pytest.param(None, id="own-uid"),
]

PROBE = """
import json, socket, sys
out = {}
for proto, host, port in json.loads(sys.argv[1]):
    key = f"{proto} {host}:{port}"
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=5) as conn:
                out[key] = "answered " + conn.recv(16).decode()
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
                conn.settimeout(3)
                conn.sendto(b"ping", (host, port))
                out[key] = "answered " + conn.recv(16).decode()
    except OSError as exc:
        out[key] = type(exc).__name__
out["resolv.conf"] = open("/etc/resolv.conf").read()
print(json.dumps(out))
"""


class HostServices:
    """What a worker's host has on its loopback (the Prefect API, Redis, ...), and one service
    on every address (0.0.0.0), each answering "host"."""

    def __init__(self) -> None:
        self.tcp_loopback = socket.create_server(("127.0.0.1", 0))
        self.tcp_everywhere = socket.create_server(("0.0.0.0", 0))
        self.udp_loopback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_loopback.bind(("127.0.0.1", 0))
        self.sockets = [self.tcp_loopback, self.tcp_everywhere, self.udp_loopback]
        for sock in self.sockets:
            sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def port(self, sock: socket.socket) -> int:
        return sock.getsockname()[1]

    def _serve(self) -> None:
        while self.running:
            for server in self.sockets[:2]:
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.sendall(b"host")
            try:
                _, peer = self.udp_loopback.recvfrom(16)
                self.udp_loopback.sendto(b"host", peer)
            except OSError:
                continue

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def host():
    services = HostServices()
    yield services
    services.close()


def host_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def platform_argv(
    work: Path, net: UserNet | None, *, share_net: bool = False, extra: tuple[str, ...] = ()
) -> list[str]:
    """bubblewrap's options as sandbox.py builds them, with `extra` and UserNet's where the
    integrator puts them: after `--ro-bind /etc /etc`, before `--remount-ro /`."""
    share = ["--share-net"] if share_net else []  # the old `internet: true`, as a baseline
    net_args = net.bwrap_args() if net else []
    return bwrap_prefix(work, readable=[], writable=[], extra=[*share, *extra, *net_args])


def sandboxed(
    argv: list[str], *, net: UserNet | None, share_net: bool = False, uid: int | None = None
) -> subprocess.CompletedProcess:
    """argv in the platform's bubblewrap sandbox, with `net` attached if given."""
    work = model_folder()
    work.chmod(0o777)  # the sandbox's uid writes there (pip download)
    args = platform_argv(work, net, share_net=share_net)
    proc = subprocess.Popen(
        [*args, "--", *argv],
        pass_fds=net.pass_fds() if net else (),
        env={"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=switch_user(uid) if uid is not None and os.geteuid() == 0 else None,
    )
    try:
        if net:
            try:
                net.attach(proc.pid)
            except RuntimeError as exc:
                proc.kill()
                said = proc.communicate(timeout=10)
                raise AssertionError(f"{exc}; bubblewrap said: {said}") from exc
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if net:
            net.close()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def probe(targets: list[tuple[str, str, int]], **options) -> dict[str, str]:
    done = sandboxed([PYTHON, "-c", textwrap.dedent(PROBE), json.dumps(targets)], **options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("uid", USERS)
def test_the_hosts_loopback_services_are_out_of_reach(host, uid):
    """Not at 127.0.0.1 (the sandbox's own loopback), not through slirp's gateway 10.0.2.2
    (--disable-host-loopback), not at the host's own address (they listen on loopback)."""
    tcp, udp = host.port(host.tcp_loopback), host.port(host.udp_loopback)
    targets = [
        ("tcp", "127.0.0.1", tcp),
        ("tcp", "10.0.2.2", tcp),
        ("udp", "127.0.0.1", udp),
        ("udp", "10.0.2.2", udp),
    ]
    address = host_address()
    if address:
        targets.append(("tcp", address, tcp))
    answers = probe(targets, net=UserNet(), uid=uid)
    assert answers.pop("resolv.conf") == "nameserver 10.0.2.3\n"
    assert not [key for key, answer in answers.items() if answer.startswith("answered")], answers


@pytest.mark.parametrize("uid", USERS)
def test_with_share_net_the_same_sandbox_reaches_the_hosts_loopback(host, uid):
    """What the guard changes: bubblewrap's --share-net (today's `internet: true`) hands the
    model every service on the host's loopback."""
    tcp, udp = host.port(host.tcp_loopback), host.port(host.udp_loopback)
    targets = [("tcp", "127.0.0.1", tcp), ("udp", "127.0.0.1", udp)]
    answers = probe(targets, net=None, share_net=True, uid=uid)
    assert answers[f"tcp 127.0.0.1:{tcp}"] == "answered host"
    assert answers[f"udp 127.0.0.1:{udp}"] == "answered host"


def test_the_fence_stops_a_service_on_every_address_and_private_ranges(host):
    """slirp4netns connects from the host, so a service listening on 0.0.0.0 would answer at the
    host's own address (and the LAN, a container bridge, a cloud's metadata server are private
    or link-local): the fence's routes make them unreachable; with them opened the same service
    answers (what the fence changes)."""
    address = host_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    port = host.port(host.tcp_everywhere)
    targets = [("tcp", address, port), ("tcp", "169.254.169.254", 80)]
    answers = probe(targets, net=UserNet(), uid=DEFAULT_MODEL_UID)
    assert "answered" not in answers[f"tcp {address}:{port}"], answers
    assert "answered" not in answers["tcp 169.254.169.254:80"], answers
    mp = pytest.MonkeyPatch()
    mp.setattr("prefect_cs.runtime.usernet.host_addresses", lambda: [])
    mp.setattr("prefect_cs.runtime.usernet.FENCED_NETWORKS", ())
    try:
        answers = probe([("tcp", address, port)], net=UserNet(), uid=DEFAULT_MODEL_UID)
    finally:
        mp.undo()
    assert answers[f"tcp {address}:{port}"] == "answered host"


def pypi_from_here() -> str | None:
    """Why PyPI cannot be reached from this machine itself (then a sandbox cannot either)."""
    started = time.perf_counter()
    try:
        urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20).read(1)
    except OSError as exc:
        return (
            f"https://pypi.org is unreachable from this host ({exc},"
            f" {time.perf_counter() - started:.1f} s)"
        )
    return None


@pytest.mark.parametrize("uid", USERS)
def test_pip_downloads_from_pypi_through_the_sandboxs_own_network(uid):
    """DNS through slirp's 10.0.2.3, TLS with the host's CA bundle (/etc is bound read-only)."""
    unreachable = pypi_from_here()
    if unreachable:
        pytest.skip(unreachable)
    argv = [PYTHON, "-m", "pip", "download", "six==1.16.0", "--no-deps", "--no-cache-dir"]
    done = sandboxed([*argv, "-d", "wheels"], net=UserNet(), uid=uid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Saved ./wheels/six-1.16.0-py2.py3-none-any.whl" in done.stdout


def test_with_the_seccomp_filter_and_no_user_namespaces_as_the_integrator_will():
    """UserNet beside runtime/seccomp.py's filter and --disable-userns (which nests the
    sandbox in a second user namespace: slirp4netns still joins the network namespace)."""
    from prefect_cs.runtime import seccomp

    if seccomp.seccomp_problem() or pypi_from_here():
        pytest.skip(seccomp.seccomp_problem() or pypi_from_here())
    net, fd = UserNet(), seccomp.seccomp_fd()
    work = model_folder()
    work.chmod(0o777)
    extra = ("--unshare-user", "--disable-userns", "--seccomp", str(fd))
    args = platform_argv(work, net, extra=extra)
    code = "import urllib.request as u; print(u.urlopen('https://pypi.org/simple/six/').status)"
    proc = subprocess.Popen(
        [*args, "--", PYTHON, "-c", code],
        pass_fds=(*net.pass_fds(), fd),
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=switch_user(DEFAULT_MODEL_UID) if os.geteuid() == 0 else None,
    )
    os.close(fd)
    try:
        net.attach(proc.pid)
        assert proc.communicate(timeout=120)[0] == "200\n"
    finally:
        proc.kill()
        proc.wait(10)
        net.close()


RESOLVED_HOST = """
set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir=$1/upper,workdir=$1/work /etc
rm /etc/resolv.conf
ln -s ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/resolve
cp $1/host-resolv.conf /run/systemd/resolve/stub-resolv.conf
shift
exec "$@"
"""
RESOLVED_SANDBOX = """
import subprocess, sys
from pathlib import Path
from prefect_cs.runtime.sandbox import bwrap_prefix, switch_user
from prefect_cs.runtime.usernet import UserNet
net = UserNet()
args = bwrap_prefix(Path(sys.argv[1]), readable=[], writable=[])
at = args.index("--remount-ro")
code = "import socket; print(open('/etc/resolv.conf').read()); socket.gethostbyname('pypi.org')"
proc = subprocess.Popen(
    [*args[:at], *net.bwrap_args(), *args[at:], "--", "/usr/bin/python3", "-c", code],
    pass_fds=net.pass_fds(),
    preexec_fn=switch_user(10001),
)
net.attach(proc.pid)
sys.exit(proc.wait(60))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace to fake the host's /etc")
def test_a_host_whose_resolv_conf_is_a_link_as_systemd_resolved_makes_it(tmp_path):
    """/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf (Ubuntu): the sandbox has no
    /run, so the file goes where the link leads. The host is faked in a mount namespace of the
    test's own (an overlay on /etc), not changed."""
    if pypi_from_here():
        pytest.skip(pypi_from_here())
    for folder in ("upper", "work"):
        (tmp_path / folder).mkdir()
    (tmp_path / "host-resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", RESOLVED_HOST, "sh"]
    argv += [str(tmp_path), sys.executable, "-c", RESOLVED_SANDBOX, str(model_folder())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "nameserver 10.0.2.3\n\n"


def test_without_usernet_the_sandbox_has_no_network_at_all():
    """The baseline UserNet adds to: the platform's sandbox resolves and reaches nothing."""
    code = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
    done = sandboxed([PYTHON, "-c", code], net=None)
    assert done.returncode != 0 and "gaierror" in done.stderr


def test_attach_refuses_a_sandbox_on_the_hosts_network_and_it_never_runs():
    """--share-net with UserNet is a mistake attach names; the sandbox it did not release is
    killed by close, even when the caller kills only bubblewrap (its child, left waiting on the
    block fd, would otherwise run the command orphaned once that fd closes)."""
    net = UserNet()
    work = model_folder()
    work.chmod(0o777)
    args = platform_argv(work, net, share_net=True)
    command = ["sh", "-c", "echo ran > ran.txt"]
    proc = subprocess.Popen([*args, "--", *command], pass_fds=net.pass_fds())
    try:
        with pytest.raises(RuntimeError, match="host's network namespace.*--share-net"):
            net.attach(proc.pid)
        child = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    finally:
        proc.kill()
        proc.wait(10)
        net.close()
    time.sleep(1.0)
    assert not (work / "ran.txt").exists()
    assert _state(Path(f"/proc/{child}")) in ("gone", "Z")


def test_attach_gives_up_in_time_when_bubblewrap_never_says_its_pid():
    """A command that holds --info-fd open and writes nothing: attach raises at its timeout."""
    net = UserNet(timeout=1.0)
    proc = subprocess.Popen(["sleep", "60"], pass_fds=net.pass_fds())
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="timed out waiting for bubblewrap"):
            net.attach(proc.pid)
        assert time.monotonic() - started < 3
    finally:
        proc.kill()
        proc.wait(10)
        net.close()


def test_attach_reports_a_bubblewrap_that_ended_at_once():
    net = UserNet()
    proc = subprocess.Popen(
        ["bwrap", "--no-such-option", *net.bwrap_args(), "--", "true"],
        pass_fds=net.pass_fds(),
        stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.raises(RuntimeError, match="bubblewrap ended before it started the sandbox"):
            net.attach(proc.pid)
    finally:
        proc.wait(10)
        net.close()


def test_a_failed_popen_then_close_leaves_no_fd_open():
    net = UserNet()
    fds = [*net.pass_fds(), net._info_read, net._block_write]
    with pytest.raises(OSError):
        subprocess.Popen(["/nonexistent/bwrap"], pass_fds=net.pass_fds())
    net.close()
    net.close()  # idempotent
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_close_stops_slirp4netns_and_it_runs_unprivileged():
    net = UserNet()
    args = platform_argv(model_folder(), net)
    proc = subprocess.Popen(
        [*args, "--", "sh", "-c", "echo running; exec sleep 60"],
        pass_fds=net.pass_fds(),
        stdout=subprocess.PIPE,
        preexec_fn=switch_user(DEFAULT_MODEL_UID) if os.geteuid() == 0 else None,
    )
    try:
        net.attach(proc.pid)
        # running: past the point where --die-with-parent binds it to bubblewrap (killed below)
        assert proc.stdout.readline() == b"running\n"  # type: ignore[union-attr]
        slirp = net._slirp.pid  # type: ignore[union-attr]
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{slirp}/status").read_text().splitlines()
        )
        assert status["Seccomp"].strip() == "2"  # --enable-seccomp
        if os.geteuid() == 0:  # --enable-sandbox: every capability dropped but NET_BIND_SERVICE
            assert int(status["CapEff"], 16) == 1 << 10
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        net.close()
    assert not Path(f"/proc/{slirp}").exists()


ORPHAN = """
import os, subprocess, sys
from pathlib import Path
from prefect_cs.runtime.sandbox import bwrap_prefix
from prefect_cs.runtime.usernet import UserNet
net = UserNet()
args = bwrap_prefix(Path(sys.argv[1]), readable=[], writable=[])
at = args.index("--remount-ro")
command = ["sh", "-c", "echo running; exec sleep 60"]
proc = subprocess.Popen(
    [*args[:at], *net.bwrap_args(), *args[at:], "--", *command],
    pass_fds=net.pass_fds(),
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
)
net.attach(proc.pid)
assert proc.stdout.readline() == b"running\\n"
sandbox = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0]
print(net._slirp.pid, sandbox, flush=True)
os._exit(0)  # a worker that dies without cleaning up
"""


def test_slirp4netns_and_the_sandbox_never_outlive_the_platform():
    """--exit-fd: when the process that started it dies, slirp4netns ends; bubblewrap's
    --die-with-parent takes the sandbox down."""
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(model_folder())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    processes = [Path(f"/proc/{pid}") for pid in done.stdout.split()]
    deadline = time.monotonic() + 10
    while any(_state(p) not in ("gone", "Z") for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {p.name: _state(p) for p in processes if _state(p) not in ("gone", "Z")} == {}


def _state(proc: Path) -> str:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_a_missing_slirp4netns_names_the_fix(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "apt-get install slirp4netns" in (usernet.usernet_problem() or "")
    with pytest.raises(NotConfigured, match="apt-get install slirp4netns"):
        UserNet()
