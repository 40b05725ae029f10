"""What the model sandbox and its kernel bounds cost a call, side by side.

    .venv/bin/python benchmarks/sandbox_overhead.py [--pairs 30]

Interleaves N rounds of the same model call (a child that imports its cs_config and
returns) in three modes: `none` (CS_SANDBOX=none, unsandboxed), `bwrap` (the namespaces-only
sandbox as it was before the kernel bounds: no cgroup, no tmpfs work folder, no seccomp
filter) and `bounded` (today's: bubblewrap plus a per-call cgroup, a size-limited tmpfs work
folder, --disable-userns and the seccomp filter), and prints p50/p95 of each and the p50
differences. Also times a warm process's first answer (start + import) and a warm call (a
fork of the zygote, then the clean-up from outside) in each mode. As root only: the bounds
need it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-sandbox-")

from prefect_cs.runtime.confinement import Bounds, Confinement  # noqa: E402
from prefect_cs.runtime.model_process import call_model  # noqa: E402
from prefect_cs.runtime.sandbox import Sandbox, model_sandbox  # noqa: E402
from prefect_cs.runtime.warm import WarmModel  # noqa: E402
from prefect_cs.testing.model_code import functions_runner, model_python  # noqa: E402

FUNCTIONS = "import json, csv, decimal\ndef run_model(a, b):\n    return {'ok': 1}\n"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


MODES = ("none", "bwrap", "bounded")
BOUNDS = Bounds(memory_mib=1024, pids=512, cpus=1.0, disk_mib=2048)  # a model config's defaults


def sandbox(mode: str) -> Sandbox:
    os.environ["CS_SANDBOX"] = "none" if mode == "none" else "bwrap"
    Confinement.measure_without_bounds = mode != "bounded"
    return model_sandbox()


def one_call(python: str, runner: str, mode: str) -> float:
    box = sandbox(mode)
    started = time.perf_counter()
    call = call_model(
        python, "run_model", [{}, {}], timeout=60, runner=runner, sandbox=box, bounds=BOUNDS
    )
    assert call.ok, call.error
    return time.perf_counter() - started


def one_warm(python: str, runner: str, mode: str) -> tuple[float, float]:
    """(start + first answer, a second call) of a warm process."""
    sandbox(mode)
    warm = WarmModel(python, runner, bounds=BOUNDS)
    try:
        started = time.perf_counter()
        assert warm.call("run_model", [{}, {}], timeout=60).ok
        first = time.perf_counter() - started
        started = time.perf_counter()
        assert warm.call("run_model", [{}, {}], timeout=60).ok
        return first, time.perf_counter() - started
    finally:
        warm.stop()


def report(name: str, figures: dict[str, list[float]]) -> None:
    for mode, values in figures.items():
        print(
            f"{name:<22} {mode:<8} p50 {statistics.median(values) * 1000:7.1f} ms"
            f"   p95 {percentile(values, 95) * 1000:7.1f} ms   (n={len(values)})"
        )
    p50 = {mode: statistics.median(values) for mode, values in figures.items()}
    print(
        f"{name:<22} sandbox adds p50 {(p50['bwrap'] - p50['none']) * 1000:+.1f} ms;"
        f" the bounds add {(p50['bounded'] - p50['bwrap']) * 1000:+.1f} ms more"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=30)
    pairs = parser.parse_args().pairs
    python, runner = model_python(), functions_runner(FUNCTIONS)
    calls: dict[str, list[float]] = {mode: [] for mode in MODES}
    starts: dict[str, list[float]] = {mode: [] for mode in MODES}
    warm_calls: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(pairs):
        for mode in MODES:
            calls[mode].append(one_call(python, runner, mode))
            first, second = one_warm(python, runner, mode)
            starts[mode].append(first)
            warm_calls[mode].append(second)
    print(f"model calls, {pairs} interleaved rounds, uid {os.geteuid()}, python {python}")
    report("call_model (child)", calls)
    report("warm start + answer", starts)
    report("warm call (fork)", warm_calls)


if __name__ == "__main__":
    main()
