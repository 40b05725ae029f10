"""What a sandbox's own network (runtime/usernet.py) costs, side by side with --share-net.

    .venv/bin/python benchmarks/usernet_overhead.py [--pairs 20] [--bulk-mib 64]

Interleaves N pairs of the same sandbox (runtime/sandbox.py's bubblewrap, as the model's
uid when run as root), once with UserNet (its own namespace, slirp4netns) and once with
--share-net (today's `internet: true`), and prints p50/p95 of:

- first byte, host: from Popen to the first byte the sandbox reads from a server on this
  machine's own address (the same path both ways: a listener on 0.0.0.0);
- first byte, PyPI: from Popen to the first byte of https://pypi.org/simple/six/ (DNS, TLS);
- attach: UserNet.attach alone (bubblewrap's setup, slirp4netns started and configured);
- bulk: MiB/s reading --bulk-mib MiB from the host server (what a large wheel costs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_cs.runtime.sandbox import DEFAULT_MODEL_UID, bwrap_prefix, switch_user  # noqa: E402
from prefect_cs.runtime.usernet import UserNet, usernet_problem  # noqa: E402

PYTHON = "/usr/bin/python3"
INSIDE = """
import json, socket, sys, time, urllib.request
host, port, bulk_port, pypi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
out = {}
with socket.create_connection((host, port), timeout=20) as conn:
    conn.recv(1)
    out["host"] = time.monotonic()
if pypi:
    started = time.monotonic()
    urllib.request.urlopen("https://pypi.org/simple/six/", timeout=30).read(1)
    out["pypi"] = time.monotonic() - started
with socket.create_connection((host, bulk_port), timeout=20) as conn:
    started, size = time.monotonic(), 0
    while chunk := conn.recv(1 << 20):
        size += len(chunk)
    out["bulk"] = size / (time.monotonic() - started) / 2**20
print(json.dumps(out))
"""


def serve(server: socket.socket, payload: bytes) -> None:
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(payload)


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return probe.getsockname()[0]


def pypi_reachable() -> bool:
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20).read(1)
        return True
    except OSError:
        return False


def one_run(mode: str, work: Path, argv: list[str]) -> dict[str, float]:
    net = UserNet() if mode == "usernet" else None
    args = bwrap_prefix(work, readable=[], writable=[], network=mode == "share-net")
    at = args.index("--remount-ro")  # UserNet's options go before it (usernet.py says why)
    args[at:at] = net.bwrap_args() if net else []
    uid = DEFAULT_MODEL_UID if os.geteuid() == 0 else None
    started = time.monotonic()
    proc = subprocess.Popen(
        [*args, "--", *argv],
        pass_fds=net.pass_fds() if net else (),
        stdout=subprocess.PIPE,
        preexec_fn=switch_user(uid) if uid is not None else None,
    )
    try:
        attach = 0.0
        if net:
            net.attach(proc.pid)
            attach = time.monotonic() - started
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if net:
            net.close()
    figures = json.loads(out)
    figures["host"] -= started
    return {**figures, "attach": attach}


def report(results: dict[str, list[dict[str, float]]]) -> None:
    rows = [  # the slow end: p95 of a time, p5 of a rate
        ("first byte, host", "host", 1000, "ms", 95),
        ("first byte, PyPI", "pypi", 1000, "ms", 95),
        ("attach", "attach", 1000, "ms", 95),
        ("bulk", "bulk", 1, "MiB/s", 5),
    ]
    for label, key, scale, unit, pct in rows:
        line = f"{label:<18}"
        for mode, runs in results.items():
            values = sorted(r[key] * scale for r in runs if key in r)
            if not values or (key == "attach" and mode == "share-net"):
                continue
            slow = values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]
            line += (
                f"  {mode:<9} p50 {statistics.median(values):8.1f}  p{pct:<2} {slow:8.1f} {unit:<6}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--bulk-mib", type=int, default=64)
    options = parser.parse_args()
    problem = usernet_problem()
    if problem:
        sys.exit(problem)
    hello, bulk = socket.create_server(("0.0.0.0", 0)), socket.create_server(("0.0.0.0", 0))
    threading.Thread(target=serve, args=(hello, b"x"), daemon=True).start()
    payload = b"\0" * (options.bulk_mib << 20)
    threading.Thread(target=serve, args=(bulk, payload), daemon=True).start()
    pypi = pypi_reachable()
    address = host_address()
    argv = [PYTHON, "-c", INSIDE, address, str(hello.getsockname()[1])]
    argv += [str(bulk.getsockname()[1]), "1" if pypi else "0"]
    work = Path(tempfile.mkdtemp(prefix="cs-bench-usernet-"))
    work.chmod(0o755)
    results: dict[str, list[dict[str, float]]] = {"usernet": [], "share-net": []}
    for _ in range(options.pairs):
        for mode in results:
            results[mode].append(one_run(mode, work, argv))
    print(
        f"{options.pairs} interleaved pairs, uid"
        f" {DEFAULT_MODEL_UID if os.geteuid() == 0 else os.geteuid()},"
        f" host {address}, PyPI {'reachable' if pypi else 'unreachable (skipped)'}"
    )
    report(results)


if __name__ == "__main__":
    main()
