"""The attacker app's attacks on the bounds, run for real, with what each got and what it cost.

    .venv/bin/python benchmarks/attack_bounds.py [--memory 1Gi] [--pids 512] [--disk 2Gi]

Runs each of examples/attacker-app's bound attacks (fork bomb, memory across processes and
/dev/shm, disk fill) and 20,000 outputs through call_model (simulate's path) in the process
tier's sandbox with a model config's bounds, and prints per attack: the outcome (the FAIL's
first line), the bill from the cgroup (CPU-seconds, peak memory), and the wall time. Then the
same table with the bounds off (the sandbox as it was before them) for comparison, except the
memory attack, which is left out there: unbounded it takes what the machine has. As root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-attacks-")

from prefect_cs.blocks.model_config import ModelConfig  # noqa: E402
from prefect_cs.runtime.confinement import Bounds, Confinement  # noqa: E402
from prefect_cs.runtime.environment import runner_for  # noqa: E402
from prefect_cs.runtime.model_process import call_model  # noqa: E402
from prefect_cs.testing.model_code import package_venv  # noqa: E402
from prefect_cs.testing.models import EXAMPLES  # noqa: E402

ATTACKS = {
    "fork_bomb": {"bound_attack": "fork_bomb"},
    "memory_hog": {"bound_attack": "memory_hog"},
    "disk_fill": {"bound_attack": "disk_fill"},
    "many_outputs": {"bound_attack": "many_outputs"},
}


def one(python: str, meta: dict, bounds: Bounds) -> str:
    started = time.perf_counter()
    call = call_model(
        python,
        "run_model",
        [meta, {}],
        timeout=300,
        runner=runner_for(python),
        memory_limit_mib=bounds.memory_mib,
        bounds=bounds,
    )
    wall = time.perf_counter() - started
    outcome = outputs_outcome(call.result) if call.ok else "FAIL: " + first_line(call.error)
    usage = call.usage
    bill = f"cpu {usage.cpu_seconds:6.2f} s  peak {usage.peak_memory_mib:7.1f} MiB" if usage else ""
    return f"{wall:6.1f} s  {bill}  {outcome}"


def outputs_outcome(result: object) -> str:
    """What simulate makes of a SUCCESS: its outputs checked as flows/outputs.py does."""
    from prefect_cs.flows.outputs import validate_outputs

    started = time.perf_counter()
    try:
        checked = validate_outputs(result)
    except Exception as exc:  # noqa: BLE001 - the FAIL simulate would send
        return (
            f"FAIL at the output check ({time.perf_counter() - started:.2f} s):"
            f" {first_line(str(exc))}"
        )
    count = sum(len(v) for v in checked.values())
    return f"SUCCESS ({count} outputs checked in {time.perf_counter() - started:.2f} s)"


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:150] if text else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", default="1Gi")
    parser.add_argument("--pids", type=int, default=512)
    parser.add_argument("--disk", default="2Gi")
    args = parser.parse_args()
    model = ModelConfig(
        owner="bench",
        title="Attacker",
        repo_url="https://example.invalid/a.git",
        memory=args.memory,
        pids=args.pids,
        disk=args.disk,
    )
    bounds = Bounds(model.memory_limit_mib, model.pids, model.cpu, model.disk_mib)
    python = package_venv(EXAMPLES / "attacker-app" / "cs-config" / "cs_config")
    print(f"bounds: {bounds.describe()} (memory {args.memory} x {model.memory_limit_factor})")
    for mode in ("bounded", "unbounded"):
        Confinement.measure_without_bounds = mode == "unbounded"
        for name, meta in ATTACKS.items():
            if mode == "unbounded" and name == "memory_hog":
                print(f"{mode:<9} {name:<13} (not run: unbounded it takes the machine's memory)")
                continue
            print(f"{mode:<9} {name:<13} {one(python, meta, bounds)}", flush=True)


if __name__ == "__main__":
    main()
