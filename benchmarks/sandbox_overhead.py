"""What the model sandbox costs a call, side by side with the same call unsandboxed.

    .venv/bin/python benchmarks/sandbox_overhead.py [--pairs 30]

Interleaves N pairs of the same model call (a child that imports its cs_config and
returns), once under CS_SANDBOX=bwrap and once under CS_SANDBOX=none, and prints
p50/p95 of each and the p50 difference. That difference is all the sandbox adds to a
simulation: the rest of the simulate flow is the same code either way. Also times a
warm process's first answer (start + import) both ways.
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

from prefect_cs.flows.runtime.model_process import call_model  # noqa: E402
from prefect_cs.flows.runtime.sandbox import Sandbox, model_sandbox  # noqa: E402
from prefect_cs.flows.runtime.warm import WarmModel  # noqa: E402
from prefect_cs.testing.model_code import functions_runner, model_python  # noqa: E402

FUNCTIONS = "import json, csv, decimal\ndef run_model(a, b):\n    return {'ok': 1}\n"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def sandbox(mode: str) -> Sandbox:
    os.environ["CS_SANDBOX"] = mode
    return model_sandbox()


def one_call(python: str, runner: str, mode: str) -> float:
    box = sandbox(mode)
    started = time.perf_counter()
    call = call_model(python, "run_model", [{}, {}], timeout=60, runner=runner, sandbox=box)
    assert call.ok, call.error
    return time.perf_counter() - started


def one_warm_start(python: str, runner: str, mode: str) -> float:
    sandbox(mode)
    warm = WarmModel(python, runner)
    started = time.perf_counter()
    try:
        assert warm.call("run_model", [{}, {}], timeout=60).ok
        return time.perf_counter() - started
    finally:
        warm.stop()


def report(name: str, figures: dict[str, list[float]]) -> None:
    for mode, values in figures.items():
        print(
            f"{name:<22} {mode:<6} p50 {statistics.median(values) * 1000:7.1f} ms"
            f"   p95 {percentile(values, 95) * 1000:7.1f} ms   (n={len(values)})"
        )
    extra = statistics.median(figures["bwrap"]) - statistics.median(figures["none"])
    print(f"{name:<22} sandbox adds p50 {extra * 1000:+.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=30)
    pairs = parser.parse_args().pairs
    python, runner = model_python(), functions_runner(FUNCTIONS)
    calls: dict[str, list[float]] = {"bwrap": [], "none": []}
    warm: dict[str, list[float]] = {"bwrap": [], "none": []}
    for _ in range(pairs):
        for mode in ("bwrap", "none"):
            calls[mode].append(one_call(python, runner, mode))
            warm[mode].append(one_warm_start(python, runner, mode))
    print(f"model calls, {pairs} interleaved pairs, uid {os.geteuid()}, python {python}")
    report("call_model (child)", calls)
    report("warm start + answer", warm)


if __name__ == "__main__":
    main()
