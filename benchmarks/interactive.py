"""What an interactive app deployment costs: time to first byte, idle memory, how many fit.

    .venv/bin/python benchmarks/interactive.py [--app dash|bokeh|streamlit]
        [--rounds 3] [--fit 6] [--cpu 1]

Builds the sample app's environment once (examples/dash-app: dash and gunicorn;
examples/bokeh-app: bokeh; examples/streamlit-app: streamlit; as publish makes it), then,
with the same sandbox and kernel bounds as a deployment (runtime/app_server.py):
- cold: from the start request to the first byte of the app's page over its socket (a new
  sandbox, gunicorn and its workers importing dash), `--rounds` times: the first round reads
  the venv from disk if it is not cached, the others from the page cache ("warm image");
- warm: the first byte of the page from a running server (p50/p95 of 20);
- idle memory of one running deployment (its cgroup's count, every process);
- how many fit: `--fit` deployments started side by side, all answering, their memory summed,
  and MemAvailable / idle memory as the ceiling memory sets on this machine.
As root only (the bounds need it). `--cpu` is the model's cpu: C/S runs 2 x floor(cpu) + 1
gunicorn workers, so cpu 0.5 means one worker.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-apps-")

import httpx  # noqa: E402
from prefect_cs.runtime.app_server import AppServer, AppSpec, server_args, url_prefix  # noqa: E402
from prefect_cs.runtime.confinement import Bounds  # noqa: E402

# app: (example, its pinned packages, model config fields, the page's path under the prefix,
#       memory bound in MiB: the model config's memory x 1.25 as for its calls)
APPS = {
    "dash": ("dash-app", ["dash==4.4.1", "gunicorn==23.0.0"],
             {"app_location": "cs_config.app", "callable_name": "server"}, "", 640),
    "bokeh": ("bokeh-app", ["bokeh==3.9.2"], {"app_location": "app.py"}, "app", 640),
    "streamlit": ("streamlit-app", ["streamlit==1.67.0"], {"app_location": "app.py"}, "", 1280),
}  # fmt: skip
APP = "dash"  # set by --app


def app_source() -> Path:
    return ROOT / "examples" / APPS[APP][0] / "cs-config"


def bounds() -> Bounds:
    return Bounds(memory_mib=APPS[APP][4], pids=512, cpus=1.0, disk_mib=512)


def build_venv() -> tuple[str, Path]:
    """A venv like publish's (uv, the system's python), readable by the model's uid."""
    venv = WORK / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True)
    packages = [*APPS[APP][1], str(app_source())]
    subprocess.run([*uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), *packages])
    app_dir = venv / "app"
    shutil.copytree(app_source(), app_dir)
    for path in (WORK, *WORK.parents):
        path.chmod(path.stat().st_mode | 0o001)
    subprocess.run(["chmod", "-R", "o+rX", str(venv)], check=True)
    return str(venv / "bin" / "python"), app_dir


def spec(python: str, app_dir: Path, name: str, cpu: float) -> tuple[AppSpec, str]:
    prefix = url_prefix("bench", APP, name)
    fields = {"app_location": None, "callable_name": None, **APPS[APP][2]}
    args = server_args(APP, prefix=prefix, cpu=cpu, origin="127.0.0.1:8795", **fields)
    env = {"URL_BASE_PATHNAME": prefix}
    return AppSpec(python, (), app_dir, tuple(args), bounds(), env), prefix


def first_byte(server: AppServer, prefix: str, deadline: float) -> float | None:
    """Seconds until the page's first byte, asked again until `deadline` (monotonic)."""
    transport = httpx.HTTPTransport(uds=str(server.socket_path))
    with httpx.Client(transport=transport, timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                with client.stream("GET", f"http://app{prefix}{APPS[APP][3]}") as answer:
                    next(answer.iter_raw(), None)
                    if answer.status_code == 200:
                        return time.monotonic()
            except httpx.HTTPError:
                time.sleep(0.05)
    return None


def cold(python: str, app_dir: Path, rounds: int, cpu: float) -> list[float]:
    times = []
    for n in range(rounds):
        app, prefix = spec(python, app_dir, f"cold-{n}", cpu)
        asked = time.monotonic()
        server = AppServer(app, WORK / "run").start()
        try:
            answered = first_byte(server, prefix, asked + 120)
            assert answered, server.output()
            times.append(answered - asked)
        finally:
            server.stop()
    return times


def warm_and_idle(python: str, app_dir: Path, cpu: float) -> tuple[list[float], int]:
    app, prefix = spec(python, app_dir, "warm", cpu)
    server = AppServer(app, WORK / "run").start()
    try:
        assert server.wait_ready(prefix, 120) is None
        times = []
        for _ in range(20):
            asked = time.monotonic()
            times.append(first_byte(server, prefix, asked + 30) - asked)  # type: ignore[operator]
        time.sleep(3)
        return times, server.memory_bytes() or 0
    finally:
        server.stop()


def fit(python: str, app_dir: Path, count: int, cpu: float) -> tuple[int, int, float]:
    servers = []
    started = time.monotonic()
    try:
        for n in range(count):
            app, prefix = spec(python, app_dir, f"fit-{n}", cpu)
            servers.append((AppServer(app, WORK / "run").start(), prefix))
        ready = sum(s.wait_ready(p, 180) is None for s, p in servers)
        seconds = time.monotonic() - started
        time.sleep(3)
        return ready, sum(s.memory_bytes() or 0 for s, _ in servers), seconds
    finally:
        for server, _ in servers:
            server.stop()


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fit", type=int, default=6)
    parser.add_argument("--cpu", type=float, default=1.0)
    parser.add_argument("--app", choices=sorted(APPS), default="dash")
    args = parser.parse_args()
    global APP
    APP = args.app
    python, app_dir = build_venv()
    cold_times = cold(python, app_dir, args.rounds, args.cpu)
    print("cold start to first byte (s):", ", ".join(f"{t:.2f}" for t in cold_times))
    warm_times, idle = warm_and_idle(python, app_dir, args.cpu)
    p95 = sorted(warm_times)[int(0.95 * (len(warm_times) - 1))]
    print(
        f"warm first byte: p50 {statistics.median(warm_times) * 1000:.1f} ms,"
        f" p95 {p95 * 1000:.1f} ms"
    )
    print(f"idle memory of one deployment: {idle / 2**20:.0f} MiB (cgroup, every process)")
    ready, total, seconds = fit(python, app_dir, args.fit, args.cpu)
    print(
        f"{args.fit} side by side: {ready} answering after {seconds:.1f} s, together"
        f" {total / 2**20:.0f} MiB ({total / max(ready, 1) / 2**20:.0f} MiB each)"
    )
    print(
        f"memory's ceiling here: MemAvailable {mem_available() / 2**30:.1f} GiB / idle →"
        f" {mem_available() // max(idle, 1)} deployments"
    )
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
