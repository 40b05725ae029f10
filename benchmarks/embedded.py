"""Figures for the embedded tier, on a fresh temporary stack.

    .venv/bin/python benchmarks/embedded.py [--runs 20] [--calls 50]

Prints: simulate overhead on the process pool (submit → web app notified, minus
the model's own task time; median of N runs), and inputs round trips p50/p95
for cached defaults, uncached defaults and parse.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import repos_folder, scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-")

from prefect_cs.blocks.webapp import WebApp  # noqa: E402
from prefect_cs.deployments.submit import submit_simulation  # noqa: E402
from prefect_cs.flows import inputs  # noqa: E402
from prefect_cs.services import stack_blocks, stack_parts  # noqa: E402
from prefect_cs.testing.models import make_repo, publish_model, register_model  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def notified_at(stub: WebAppStub, task_id: str, timeout: float = 120) -> tuple[float, dict]:
    request = stub.first_about(task_id, timeout)
    return request.received, request.body


def simulate_overhead(stub: WebAppStub, runs: int) -> list[float]:
    overheads = []
    for _ in range(runs):
        task_id = str(uuid.uuid4())
        submitted = time.monotonic()
        submit_simulation(
            "bench",
            "Misbehaving",
            {},
            {"control": {"behavior": [{"value": "ok"}]}},
            task_id=task_id,
        )
        received, body = notified_at(stub, task_id)
        assert body["status"] == "SUCCESS", body
        overheads.append(received - submitted - sum(body["meta"]["task_times"]))
    return overheads


def timed(call, count: int, before=None) -> list[float]:
    times = []
    for i in range(count):
        if before:
            before(i)
        started = time.perf_counter()
        answer = call(i)
        times.append(time.perf_counter() - started)
        assert answer["status"] == "SUCCESS", answer
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    server = stack_parts.PrefectServer(api_url=os.environ["PREFECT_API_URL"])
    server.start()
    workers = [stack_parts.process_worker(), stack_parts.inputs_worker()]
    stub = WebAppStub()
    try:
        stack_blocks.register_blocks()
        stack_blocks.ensure_storage_blocks()
        stub.start()
        WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)
        repo = make_repo("misbehaving-app", repos_folder(WORK) / "repo")
        register_model("bench", "Misbehaving", repo, repo_tag="v1", time_limit=60)
        assert publish_model("bench", "Misbehaving").is_completed()
        for worker in workers:
            worker.start()
        time.sleep(3)

        overhead = simulate_overhead(stub, args.runs)
        print(
            f"simulate overhead, process pool, {args.runs} runs: median"
            f" {statistics.median(overhead):.2f} s"
            f" (min {min(overhead):.2f}, max {max(overhead):.2f})"
        )

        inputs.get_version("bench", "Misbehaving")  # warm the model process
        model = inputs.ModelConfig.for_model("bench", "Misbehaving")
        storage = inputs._storage()

        def uncache(_: int) -> None:
            path = Path(storage.basepath) / inputs.cache_path(model, "v1", {})
            path.unlink(missing_ok=True)

        figures = {
            "defaults, uncached": timed(
                lambda i: inputs.get_defaults("bench", "Misbehaving", {}), args.calls, uncache
            ),
            "defaults, cached": timed(
                lambda i: inputs.get_defaults("bench", "Misbehaving", {}), args.calls
            ),
            "parse": timed(
                lambda i: inputs.parse(
                    "bench", "Misbehaving", str(uuid.uuid4()), {}, {"control": {}}
                ),
                args.calls,
            ),
        }
        for name, times in figures.items():
            print(
                f"inputs {name}, {args.calls} calls: p50 {percentile(times, 50) * 1000:.0f} ms,"
                f" p95 {percentile(times, 95) * 1000:.0f} ms"
            )
    finally:
        for worker in workers:
            worker.stop()
        stub.stop()
        server.stop()


if __name__ == "__main__":
    main()
