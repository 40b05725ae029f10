"""What the sandbox's platform init (runtime/usage.py) costs a model call.

    .venv/bin/python benchmarks/usage_init.py [--pairs 30]

Interleaves N pairs of the same bubblewrap-sandboxed call (a child that imports its
cs_config and returns), once with the init that makes the whole process tree
measurable and once with the model itself as the sandbox's pid 1, and prints the p50
of each and their difference: one more interpreter start per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

scratch_environment("cs-bench-usage-init-")

from prefect_cs.runtime import model_process  # noqa: E402
from prefect_cs.runtime.sandbox import model_sandbox  # noqa: E402
from prefect_cs.testing.model_code import functions_runner, model_python  # noqa: E402

FUNCTIONS = "import json, csv, decimal\ndef run_model(a, b):\n    return {'ok': 1}\n"


def timed_call(runner: str, with_init: bool) -> float:
    """One call's milliseconds; without the init, argv is left as it is."""
    model_process.measured = WITH_INIT if with_init else (lambda argv: argv)
    started = time.perf_counter()
    call = model_process.call_model(
        model_python(), "run_model", [{}, {}], timeout=60, runner=runner, sandbox=model_sandbox()
    )
    if not call.ok:
        raise SystemExit(f"the call failed: {call.error}")
    return (time.perf_counter() - started) * 1000


WITH_INIT = model_process.measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    pairs = parser.parse_args().pairs
    runner = functions_runner(FUNCTIONS)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(pairs):
        for with_init in (True, False):
            times[with_init].append(timed_call(runner, with_init))
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(f"with the init:    p50 {p50[True]:.1f} ms ({pairs} calls)")
    print(f"model as pid 1:   p50 {p50[False]:.1f} ms ({pairs} calls)")
    print(f"difference of p50s: {p50[True] - p50[False]:.1f} ms")


if __name__ == "__main__":
    main()
