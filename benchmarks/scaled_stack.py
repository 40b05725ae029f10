"""SQLite stack vs the scaled stack (PostgreSQL + Redis messaging), same machine, same run.

    .venv/bin/python benchmarks/scaled_stack.py [--runs 3] [--burst 8] [--workers 2]
        [--first postgresql]

For each database, a fresh operator stack (testing/operator_stack.py) with
`--workers N`: its start, one publish of the misbehaving sample app through
`publish/publish`, `--runs` simulations one after another (`prefect-cs simulate`,
submit → run Completed, the CLI's own start included), then a burst: `--burst`
simulations submitted back to back without waiting, timed until the web app
stand-in has every result, and how many came back FAIL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.operator_stack import OperatorStack  # noqa: E402

OWNER, TITLE = "bench", "Misbehaving"
DATABASES = ("sqlite", "postgresql")
OK = json.dumps({"control": {"behavior": [{"value": "ok"}]}})


def results(ops: OperatorStack, task_ids: set[str]) -> list[dict]:
    """The web app stand-in's PUT /outputs/api/ bodies for these tasks."""
    log = ops.stack_dir / "webapp-requests.jsonl"
    bodies = [json.loads(line).get("body", {}) for line in log.read_text().splitlines()]
    return [b for b in bodies if b.get("task_id") in task_ids]


def burst(ops: OperatorStack, count: int, timeout: float = 900) -> tuple[float, int]:
    """`count` simulations submitted back to back; seconds until all are reported, FAIL count."""
    started = time.monotonic()
    ids = set()
    for _ in range(count):
        out = ops.cli("simulate", f"{OWNER}/{TITLE}", "-a", OK, "--wait", "0")
        ids.add(out.split(" task ", 1)[1].split(":", 1)[0].strip())
    while len(got := results(ops, ids)) < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{len(got)} of {count} burst results after {timeout} s")
        time.sleep(1)
    return time.monotonic() - started, sum(b["status"] == "FAIL" for b in got)


def measure(database: str, runs: int, burst_size: int, workers: int) -> dict[str, float]:
    ops = OperatorStack()
    try:
        ops.start("--database", database, "--workers", str(workers))
        ops.register_misbehaving(OWNER)
        publish = ops.publish(OWNER, TITLE)
        sims = [float(ops.simulate(OWNER, TITLE, OK)["seconds"]) for _ in range(runs)]
        burst_seconds, fails = burst(ops, burst_size)
        return {
            "start": ops.start_seconds,
            "publish": publish,
            "simulate p50": statistics.median(sims),
            "simulate min": min(sims),
            f"burst of {burst_size}": burst_seconds,
            "burst FAILs": fails,
        }
    finally:
        ops.stop()
        shutil.rmtree(ops.work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--first", choices=DATABASES, default="sqlite", help="which stack runs first (load drifts)"
    )
    args = parser.parse_args()
    order = sorted(DATABASES, key=lambda db: db != args.first)
    figures = {db: measure(db, args.runs, args.burst, args.workers) for db in order}
    print(f"{'seconds':<16}{'sqlite':>12}{'postgresql':>12}")
    for key in figures["sqlite"]:
        print(f"{key:<16}{figures['sqlite'][key]:>12.1f}{figures['postgresql'][key]:>12.1f}")


if __name__ == "__main__":
    main()
