"""Latency through the cluster API, as the web app sees it, on a fresh temporary stack.

    .venv/bin/python benchmarks/api_latency.py [--calls 200]

Starts a Prefect server (SQLite), the inputs worker and `prefect-cs api serve`
(its own process), publishes the misbehaving sample app (testing/bench_stack.py;
no pool worker: sims are acknowledged, not run), then times POST
/{owner}/{title}/ from an httpx client (one connection, like C/S's requests
session) for: version, defaults cached, defaults uncached (new meta parameters
each call: a model call through the inputs server), parse acknowledgement and
sim acknowledgement. Then it publishes and promotes a second tag and times the
first version and defaults calls after it. Prints p50/p95/p99 in ms (client
side, so the server's share is less); C/S's client gives each attempt 1.7 s.

Last, with C/S's own client (testing/cs_client.py: 1.7 s per attempt, five
attempts): defaults whose model call takes 1, 3, 6 and 8 s (the misbehaving app's
"slow" get_inputs, new meta parameters each), two page loads at once, and for
each the attempts C/S needed, the time, the model calls made (distinct call
names in the answers) and the defaults task runs created. Goal: every call of
≤ 6 s answered within the five attempts, one model call per key.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-api-")

import httpx  # noqa: E402
from prefect_cs.testing.bench_stack import bench_stack  # noqa: E402
from prefect_cs.testing.models import add_tag, publish_model  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402

OK = {"control": {"behavior": [{"value": "ok"}]}}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def timed(client: httpx.Client, body_for, count: int) -> list[float]:
    times = []
    for _ in range(count):
        body = body_for()
        started = time.perf_counter()
        r = client.post("/bench/Misbehaving/", json=body)
        times.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
        assert r.json().get("status", "SUCCESS") == "SUCCESS", r.text
    return times


def bodies() -> dict:
    return {
        "version": lambda: {"task_name": "version", "tag": None, "task_kwargs": {}},
        "defaults, cached": lambda: {
            "task_name": "defaults",
            "tag": None,
            "task_kwargs": {"meta_param_dict": {}},
        },
        "defaults, uncached": lambda: {
            "task_name": "defaults",
            "tag": None,
            "task_kwargs": {"meta_param_dict": {"call": str(uuid.uuid4())}},
        },
        "parse ack": lambda: {
            "task_name": "parse",
            "tag": None,
            "task_id": str(uuid.uuid4()),
            "task_kwargs": {"meta_param_dict": {}, "adjustment": OK, "errors_warnings": {}},
        },
        "sim ack": lambda: {
            "task_name": "sim",
            "tag": "v1",
            "task_id": str(uuid.uuid4()),
            "task_kwargs": {"meta_param_dict": {}, "adjustment": OK},
        },
    }


def parses_answered(stub: WebAppStub, expected: int, timeout: float = 900) -> None:
    """Wait for every acknowledged parse's PUT /inputs/api/: none may be lost."""
    started = time.monotonic()
    while len(stub.received("/inputs/api/")) < expected:
        assert time.monotonic() - started < timeout, "parse answers missing"
        time.sleep(0.5)
    print(
        f"{'parse answers':>18}: all {expected} PUT /inputs/api/ within"
        f" {time.monotonic() - started:.0f} s of the last ack",
        flush=True,
    )


def baseline_run_deployment(count: int) -> None:
    """Side by side: how a sim was submitted before (run_deployment: a new client, the
    deployment read by name, then the run), in this process, on the same server."""
    from prefect.deployments import run_deployment

    times = []
    for _ in range(count):
        started = time.perf_counter()
        task_id = str(uuid.uuid4())
        run_deployment(
            "simulate/bench-misbehaving",
            parameters={"owner": "bench", "title": "Misbehaving", "task_id": task_id, "tag": "v1"},
            timeout=0,
            tags=[f"task:{task_id}"],
            idempotency_key=f"task:{task_id}",
        )
        times.append(time.perf_counter() - started)
    print(
        f"{'baseline: run_deployment':>18}, {count} calls: p50 {percentile(times, 50) * 1000:.0f}"
        " ms,"
        f" p95 {percentile(times, 95) * 1000:.0f} ms (the sim path before, no HTTP hop)",
        flush=True,
    )


def after_promote(client: httpx.Client, repo: Path) -> None:
    """Publish and promote v2, then time the web app's first version and defaults calls."""
    add_tag(repo, "v2", "second tag")
    assert publish_model("bench", "Misbehaving", "v2").is_completed()
    time.sleep(2.5)  # the API's model config cache (CS_API_CONFIG_TTL_SECONDS, 2 s) sees v2
    for name in ("version", "defaults, cached"):
        started = time.perf_counter()
        r = client.post("/bench/Misbehaving/", json=bodies()[name]())
        took = (time.perf_counter() - started) * 1000
        assert r.status_code == 200 and r.json()["status"] == "SUCCESS", r.text
        print(f"{'first ' + name.split(',')[0]:>18} after promoting v2: {took:.0f} ms", flush=True)


def defaults_task_runs() -> set:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as c:
        found = c.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="inputs-defaults")),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return {r.id for r in found}


def cs_page_load(url: str, token: str, meta: dict) -> tuple[dict | str, int, float]:
    """One C/S defaults request: (its answer or the error C/S raises, attempts, seconds)."""
    from prefect_cs.testing.cs_client import ComputeStudioClient, WorkersUnreachableError

    cs, started = ComputeStudioClient(url, token), time.perf_counter()
    try:
        result: dict | str = cs.submit_job(
            "bench", "Misbehaving", "defaults", {"meta_param_dict": meta}
        )
    except WorkersUnreachableError as exc:
        result = str(exc)
    return result, cs.attempts_made[-1], time.perf_counter() - started


def cs_slow_defaults(url: str, token: str) -> None:
    """Two C/S page loads at once for defaults whose model call takes `seconds`."""
    from concurrent.futures import ThreadPoolExecutor

    for seconds in (1, 3, 6, 8):
        meta = {"behavior": "slow", "seconds": seconds, "page": str(uuid.uuid4())}
        before = defaults_task_runs()
        with ThreadPoolExecutor(2) as pool:
            loads = list(pool.map(cs_page_load, [url] * 2, [token] * 2, [meta] * 2))
        answered = [r for r, _, _ in loads if isinstance(r, dict) and r["status"] == "SUCCESS"]
        calls = {r["meta_parameters"]["call"]["value"] for r in answered}
        print(
            f"{'C/S defaults':>18}, model call {seconds} s, 2 page loads at once:"
            f" answered {len(answered)}/2, attempts {[a for _, a, _ in loads]},"
            f" {max(t for _, _, t in loads):.1f} s; model calls {len(calls)},"
            f" defaults task runs {len(defaults_task_runs() - before)}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with bench_stack(WORK, pool_worker=False) as bench:
        headers = {"Authorization": f"Bearer {bench.token}"}
        with httpx.Client(base_url=bench.url, headers=headers, timeout=60) as client:
            for body in bodies().values():  # warm: model process, defaults cache, first runs
                timed(client, body, 2)
            for name, body in bodies().items():
                t = timed(client, body, args.calls)
                print(
                    f"{name:>18}, {args.calls} calls: p50 {percentile(t, 50) * 1000:.0f} ms,"
                    f" p95 {percentile(t, 95) * 1000:.0f} ms,"
                    f" p99 {percentile(t, 99) * 1000:.0f} ms",
                    flush=True,
                )
                if name == "parse ack":  # let the parse backlog drain before timing sims
                    parses_answered(bench.stub, args.calls + 2)
            baseline_run_deployment(args.calls // 4)
            after_promote(client, bench.repo)
            cs_slow_defaults(bench.url, bench.token)


if __name__ == "__main__":
    main()
