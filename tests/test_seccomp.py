"""The model sandbox's seccomp filter (runtime/seccomp.py), against a real bubblewrap.

Every probe runs inside bubblewrap as the model's uid (10001 when the tests run as root, as
the platform does) and prints what the kernel answered. Each guarantee is shown twice: with the
filter the call is refused, and in the same sandbox without it the call gets through (or fails
differently), so a test cannot pass because the kernel refused on its own. Where the kernel
refuses an unprivileged call anyway (kexec_load, init_module), a program built to answer an
errno no syscall returns by itself (MARKER) shows that the filter, not the kernel, answered.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest
from prefect_cs.core.errors import NotConfigured
from prefect_cs.runtime import seccomp
from prefect_cs.runtime.sandbox import DEFAULT_MODEL_UID, switch_user

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or seccomp.seccomp_problem() is not None,
    reason=f"needs bubblewrap and libseccomp: {seccomp.seccomp_problem()}",
)

MARKER = errno.ENOTRECOVERABLE  # no syscall probed here answers this by itself
PYTHON = "/usr/bin/python3"  # an interpreter the model's uid can start; has pip
SIGCHLD = 17

# Probes run in the sandbox: each prints {name: errno} (0: the call succeeded).
PROBE_HEADER = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(sys.argv[1])
def raw(name, *args):
    ctypes.set_errno(0)
    got = libc.syscall(NR[name], *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if got == -1 else 0
def clone(flags):
    ctypes.set_errno(0)
    pid = libc.syscall(NR["clone"], ctypes.c_long(flags | 17), *[ctypes.c_long(0)] * 4)
    if pid == 0:
        os._exit(0)
    if pid < 0:
        return ctypes.get_errno()
    os.waitpid(pid, 0)
    return 0
"""

BEHAVIOURS = """
def mount_tmpfs():
    ctypes.set_errno(0)
    return ctypes.get_errno() if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) else 0
def alone(probe, *args):  # in a child of its own: a call that succeeds changes that process
    pid = os.fork()
    if pid == 0:
        os._exit(probe(*args))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps({
    "unshare(CLONE_NEWUSER)": alone(raw, "unshare", 0x10000000),
    "clone(CLONE_NEWUSER)": alone(clone, 0x10000000),
    "mount tmpfs": alone(mount_tmpfs),
    "ptrace(PTRACE_TRACEME)": alone(raw, "ptrace", 0, 0, 0, 0),
    "bpf(unknown command)": alone(raw, "bpf", 9999, 0, 0),
    "keyctl(unknown command)": alone(raw, "keyctl", 9999, 0, 0, 0, 0),
    "clone3(NULL, 0)": alone(raw, "clone3", 0, 0),
    "personality(ADDR_NO_RANDOMIZE)": alone(raw, "personality", 0x0040000),
}))
"""

EVERY_BLOCKED = """
print(json.dumps({name: raw(name, -1, -1, -1, -1, -1, -1) for name in NR}))
"""


def syscall_numbers(*names: str) -> str:
    import pyseccomp

    return json.dumps({name: pyseccomp.resolve_syscall(0, name) for name in names})


def program_fd(program: bytes) -> int:
    fd = os.memfd_create("test-seccomp")
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def sandboxed(
    argv: list[str],
    *,
    fd: int | None,
    disable_userns: bool = False,
    caps: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """argv in bubblewrap as the model's uid; the filter from `fd` if given (closed here)."""
    args = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
    args += ["--disable-userns"] if disable_userns else []
    # caps: root with every capability in its user namespace, the strongest place model code
    # can hold (bubblewrap makes the mount namespace in the namespace root is mapped in)
    args += ["--uid", "0", "--gid", "0", "--cap-add", "ALL"] if caps else []
    args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    args += ["--seccomp", str(fd)] if fd is not None else []
    try:
        return subprocess.run(
            [*args, "--", *argv],
            pass_fds=(fd,) if fd is not None else (),
            preexec_fn=switch_user(DEFAULT_MODEL_UID) if os.geteuid() == 0 else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        if fd is not None:
            os.close(fd)


def probe(body: str, names: tuple[str, ...], **options) -> dict[str, int]:
    code = textwrap.dedent(PROBE_HEADER) + textwrap.dedent(body)
    done = sandboxed([PYTHON, "-c", code, syscall_numbers(*names)], **options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# What the filter must refuse, written out here rather than read from the module: dropping a
# name from seccomp.BLOCKED_SYSCALLS must fail a test, not shrink what the tests look at.
MUST_REFUSE = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
    "process_vm_readv", "process_vm_writev", "bpf", "keyctl", "add_key", "request_key",
    "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "fsopen",
    "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl",
    "swapon", "swapoff", "reboot", "acct", "lookup_dcookie", "iopl", "ioperm", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip
BEHAVIOUR_NAMES = ("unshare", "clone", "mount", "ptrace", "bpf", "keyctl", "clone3", "personality")


def test_the_program_is_classic_bpf_and_each_fd_is_a_fresh_sealed_copy():
    program = seccomp.seccomp_program()
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes an instruction
    first, second = seccomp.seccomp_fd(), seccomp.seccomp_fd()
    try:
        assert first != second
        assert os.read(first, len(program) + 1) == program  # positioned at its start
        assert os.pread(second, len(program) + 1, 0) == program
        with pytest.raises(PermissionError):  # sealed: nothing can change what bwrap reads
            os.pwrite(second, b"\0" * 8, 0)
    finally:
        os.close(first)
        os.close(second)


@pytest.mark.parametrize("disable_userns", [True, False], ids=["platform", "filter-only"])
def test_what_the_model_tries_is_refused_with_eperm_by_the_filter(disable_userns):
    """The platform's configuration (--unshare-user --disable-userns --seccomp), and the filter
    alone: --disable-userns nests the sandbox in a second user namespace, where the kernel
    refuses a mount by itself; without it only the filter refuses (see the next test)."""
    answers = probe(
        BEHAVIOURS,
        BEHAVIOUR_NAMES,
        fd=seccomp.seccomp_fd(),
        disable_userns=disable_userns,
        caps=True,
    )
    expected = dict.fromkeys(answers, errno.EPERM)
    expected["clone3(NULL, 0)"] = errno.ENOSYS  # so that glibc falls back to clone
    assert answers == expected


def test_without_the_filter_the_same_calls_reach_the_kernel():
    """What the test above would see if the filter were gone: each call gets through (0) or
    fails for another reason, so none of its EPERMs comes from the kernel alone."""
    answers = probe(BEHAVIOURS, BEHAVIOUR_NAMES, fd=None, caps=True)
    assert answers["unshare(CLONE_NEWUSER)"] == 0
    assert answers["clone(CLONE_NEWUSER)"] == 0
    assert answers["mount tmpfs"] == 0
    assert answers["ptrace(PTRACE_TRACEME)"] == 0
    assert answers["bpf(unknown command)"] == errno.EINVAL
    assert answers["keyctl(unknown command)"] == errno.EOPNOTSUPP
    assert answers["clone3(NULL, 0)"] == errno.EINVAL
    assert answers["personality(ADDR_NO_RANDOMIZE)"] == 0


def test_every_blocked_syscall_is_answered_by_the_filter_itself():
    """A program refusing with MARKER: each listed syscall gets it, whatever the kernel would
    have said (kexec_load, reboot and init_module are refused by the kernel too)."""
    fd = program_fd(seccomp.build_program(MARKER))
    names = tuple(dict.fromkeys((*MUST_REFUSE, *seccomp.BLOCKED_SYSCALLS)))
    answers = probe(EVERY_BLOCKED, names, fd=fd, disable_userns=True)
    assert answers == dict.fromkeys(names, MARKER)


# CLONE_NEWTIME (0x80) is not among them: clone reads that bit as part of the exit signal
# (the filter refuses it all the same); unshare, refused whole, is where it would be used.
CLONE_NAMESPACES = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


@pytest.mark.parametrize("flag", CLONE_NAMESPACES)
def test_clone_with_a_namespace_flag_is_refused_and_without_one_is_not(flag):
    """In a sandbox with every capability in its user namespace, where only the filter stands
    between the model and a new namespace."""
    value = CLONE_NAMESPACES[flag]
    body = f"print(json.dumps({{'with': clone({value}), 'without': clone(0)}}))"
    fd = program_fd(seccomp.build_program(MARKER))
    assert probe(body, ("clone",), fd=fd, caps=True) == {"with": MARKER, "without": 0}
    assert probe(body, ("clone",), fd=None, caps=True) == {"with": 0, "without": 0}


def test_personality_can_be_asked_but_not_weakened():
    body = """
    ctypes.set_errno(0)
    out = {"query": libc.personality(0xFFFFFFFF), "linux": libc.personality(0)}
    for name, flag in json.loads(sys.argv[2]).items():
        ctypes.set_errno(0)
        out[name] = ctypes.get_errno() if libc.personality(flag) == -1 else 0
        libc.personality(0)
    print(json.dumps(out))
    """
    code = textwrap.dedent(PROBE_HEADER) + textwrap.dedent(body)
    flags = json.dumps(seccomp.PERSONALITY_REFUSED)
    argv = [PYTHON, "-c", code, syscall_numbers(), flags]
    done = sandboxed(argv, fd=seccomp.seccomp_fd(), disable_userns=True)
    answers = json.loads(done.stdout)
    refused = dict.fromkeys(seccomp.PERSONALITY_REFUSED, errno.EPERM)
    assert answers == {"query": 0, "linux": 0, **refused}
    done = sandboxed(argv, fd=None)
    assert json.loads(done.stdout) == {"query": 0, "linux": 0, **dict.fromkeys(refused, 0)}


def test_unshare_command_fails_with_the_filter_and_works_without_any_guard():
    """`unshare -Ur true`: the filter refuses (EPERM); --disable-userns alone refuses too, in
    its own way (ENOSPC, no namespace left to make); with neither, it succeeds: the guards are
    what stands between the model and a new user namespace."""
    argv = ["unshare", "-Ur", "true"]
    guarded = sandboxed(argv, fd=seccomp.seccomp_fd(), disable_userns=True)
    assert guarded.returncode != 0 and "Operation not permitted" in guarded.stderr
    filter_only = sandboxed(argv, fd=seccomp.seccomp_fd())
    assert filter_only.returncode != 0 and "Operation not permitted" in filter_only.stderr
    userns_only = sandboxed(argv, fd=None, disable_userns=True)
    assert userns_only.returncode != 0 and "No space left on device" in userns_only.stderr
    unguarded = sandboxed(argv, fd=None)
    assert unguarded.returncode == 0, unguarded.stderr


ORDINARY_WORK = """
import json, multiprocessing, os, socket, subprocess, sys, threading
out = {}
out["subprocess"] = subprocess.run(["sh", "-c", "echo sub"], capture_output=True, text=True).stdout
seen = []
threads = [threading.Thread(target=seen.append, args=(n,)) for n in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
out["threads"] = sorted(seen)
with multiprocessing.get_context("fork").Pool(2) as pool:
    out["fork pool"] = pool.map(abs, [-1, -2, -3])
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname(), timeout=10)
peer, _ = server.accept()
client.sendall(b"ping")
out["loopback"] = peer.recv(4).decode()
pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
out["pip"] = pip.stdout.split()[0] if pip.returncode == 0 else pip.stderr
print(json.dumps(out))
"""


def test_ordinary_model_work_still_works_under_the_filter():
    """Processes, threads (glibc's clone3 falls back to clone on ENOSYS), a fork pool, a socket
    on the sandbox's own loopback and pip."""
    done = sandboxed([PYTHON, "-c", ORDINARY_WORK], fd=seccomp.seccomp_fd(), disable_userns=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "subprocess": "sub\n",
        "threads": [0, 1, 2, 3],
        "fork pool": [1, 2, 3],
        "loopback": "ping",
        "pip": "pip",
    }


# i386 getpid through int 0x80 from a 64-bit process: mov eax, 20; int 0x80; ret
INT80_GETPID = """
import ctypes, mmap, sys
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print("calling", flush=True)
print("answered", ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the 32-bit ABI probe is x86-64 code")
def test_a_syscall_through_another_abi_kills_the_process():
    """The rules name x86-64 numbers; a 32-bit call (int 0x80) would slip past them, so it
    ends the process instead (the i386 number 20 is getpid, harmless, to show the path)."""
    unfiltered = sandboxed([PYTHON, "-c", INT80_GETPID], fd=None)
    if "answered" not in unfiltered.stdout:
        pytest.skip(f"this kernel has no 32-bit ABI to bypass with: {unfiltered.stderr[-200:]}")
    filtered = sandboxed([PYTHON, "-c", INT80_GETPID], fd=seccomp.seccomp_fd())
    assert "calling" in filtered.stdout and "answered" not in filtered.stdout
    assert filtered.returncode != 0


def test_without_the_binding_the_problem_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import fails as without the package
    seccomp.seccomp_problem.cache_clear()
    try:
        assert "apt-get install libseccomp2" in (seccomp.seccomp_problem() or "")
        with pytest.raises(NotConfigured, match="pip install prefect-cs"):
            seccomp.build_program(errno.EPERM)
    finally:
        seccomp.seccomp_problem.cache_clear()
