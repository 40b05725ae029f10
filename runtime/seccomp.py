"""A seccomp filter for the model sandbox: the kernel calls model code never needs, refused.

bubblewrap's namespaces confine what model code sees; they do not shrink what it can ask the
kernel. A user namespace makes the model "root" over its own namespaces, which opens kernel
paths (new namespaces, mounts, keyrings, BPF, io_uring) that have been the door of many local
privilege escalations. No model (pandas, numpy, a solver, pip) uses them, so this filter
refuses them outright, before the kernel's own checks run:

- the default action is ALLOW: the list names what is refused, not what is allowed, so a new
  libc or a new numpy needing an ordinary syscall keeps working;
- the syscalls in BLOCKED_SYSCALLS fail with EPERM (a normal error a program handles, not a
  kill that would look like a crash of the model);
- clone with any CLONE_NEW* flag fails with EPERM; clone without them (fork, threads) works;
- clone3 fails with ENOSYS: its flags are in memory a filter cannot read, and ENOSYS is what
  makes glibc fall back to clone, which the filter can read;
- personality that would turn off address randomisation (or make data executable, or map
  page zero) fails with EPERM; querying it (0xffffffff) and the ordinary personas work;
- a syscall of another ABI (32-bit int 0x80, x32) kills the process: the rules name this
  architecture's numbers only, so such a call would otherwise slip past them.

bubblewrap applies it (`--seccomp FD`) just before it execs the sandboxed command, after its
own setup, so the filter binds the model's whole process tree and nothing of bubblewrap.
The program is compiled by libseccomp (through pyseccomp, a ctypes binding of its official
API), which writes the architecture checks that hand-written BPF gets wrong.
"""

from __future__ import annotations

import errno
import functools
import os

from prefect_cs.core.errors import NotConfigured

BLOCKED_SYSCALLS: tuple[str, ...] = (
    # new namespaces and mounts: the sandbox's shape is bubblewrap's to make, not the model's
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    # other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # kernel attack surface a model never needs
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "lookup_dcookie",
    # the machine's own administration
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "quotactl",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "iopl",
    "ioperm",
    "syslog",
)

CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# personality(2) flags that weaken the process's own memory protection (linux/personality.h).
PERSONALITY_REFUSED: dict[str, int] = {
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "MMAP_PAGE_ZERO": 0x0100000,
    "ADDR_COMPAT_LAYOUT": 0x0200000,
    "READ_IMPLIES_EXEC": 0x0400000,
}
_PERSONALITY_QUERY_BIT = 0x80000000  # set only in the query 0xffffffff, never in a real persona
_INSTALL_FIX = (
    "install libseccomp (`apt-get install libseccomp2`) and the platform's dependencies"
    " (`pip install prefect-cs`, which pins pyseccomp)"
)


@functools.cache
def seccomp_problem() -> str | None:
    """Why a filter cannot be made here, or None: probed once per process."""
    try:
        build_program(errno.EPERM)
    except NotConfigured as exc:
        return str(exc)
    return None


@functools.cache
def seccomp_program() -> bytes:
    """The compiled classic-BPF program for this machine's architecture, built once."""
    return build_program(errno.EPERM)


def seccomp_fd() -> int:
    """A new fd holding the program, positioned at its start, for bubblewrap's `--seccomp FD`.

    bubblewrap reads it to EOF, so every sandbox needs its own fd (one read moves the offset for
    every copy). The caller passes it with Popen(pass_fds=...) and closes it after Popen. It is
    sealed: nothing holding it can change the program bubblewrap will read.
    """
    program = seccomp_program()
    fd = os.memfd_create("cs-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        _seal(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def _seal(fd: int) -> None:
    import fcntl

    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


def build_program(refusal: int) -> bytes:
    """The filter's program, refusing with errno `refusal` (tests use an unusual errno to see
    the filter, not the kernel's own checks, answer); NotConfigured naming the fix if it
    cannot be built here."""
    seccomp = _binding()
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    try:
        flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
        for name in BLOCKED_SYSCALLS:
            flt.add_rule(seccomp.ERRNO(refusal), _number(seccomp, name))
        _refuse_namespace_clones(seccomp, flt, refusal)
        _refuse_weak_personalities(seccomp, flt, refusal)
        flt.add_rule(seccomp.ERRNO(errno.ENOSYS), _number(seccomp, "clone3"))
        return _export(flt)
    except OSError as exc:
        raise NotConfigured(
            f"libseccomp could not build the model's seccomp filter: {exc}"
        ) from exc


def _binding():
    """pyseccomp, or NotConfigured naming the fix (it raises RuntimeError without libseccomp)."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise NotConfigured(f"no seccomp filter can be made ({exc}): {_INSTALL_FIX}") from exc
    return pyseccomp


def _number(seccomp, name: str) -> int:
    """The syscall's number here; libseccomp answers -1 (not an exception) for a name it lacks."""
    number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    if number == -1:
        raise NotConfigured(
            f"this libseccomp does not know the syscall {name!r}: install libseccomp 2.5 or"
            " newer (`apt-get install libseccomp2`)"
        )
    return number


def _clone_flags_argument(seccomp) -> int:
    """clone's flags are its first argument, except on s390 (CLONE_BACKWARDS2) where second."""
    return 1 if seccomp.system_arch() in (seccomp.Arch.S390, seccomp.Arch.S390X) else 0


def _refuse_namespace_clones(seccomp, flt, refusal: int) -> None:
    """One rule per flag: a filter compares (arg & mask) == value, so "any of" is one per bit."""
    arg, clone = _clone_flags_argument(seccomp), _number(seccomp, "clone")
    for flag in CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(seccomp.ERRNO(refusal), clone, seccomp.Arg(arg, seccomp.MASKED_EQ, flag, flag))


def _refuse_weak_personalities(seccomp, flt, refusal: int) -> None:
    """The flag set and the query bit clear: personality(0xffffffff) only asks, and stays
    allowed."""
    personality = _number(seccomp, "personality")
    for flag in PERSONALITY_REFUSED.values():
        mask = flag | _PERSONALITY_QUERY_BIT
        flt.add_rule(
            seccomp.ERRNO(refusal), personality, seccomp.Arg(0, seccomp.MASKED_EQ, mask, flag)
        )


def _export(flt) -> bytes:
    """libseccomp writes the program to an fd; a memfd keeps it off the disk."""
    fd = os.memfd_create("cs-seccomp-build", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as sink:
            flt.export_bpf(sink)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
