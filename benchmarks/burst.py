"""Bursts and overhead on one pool and one server database, on a fresh temporary stack (issue 12's
figures).

    .venv/bin/python benchmarks/burst.py [--burst 50] [--pairs 10] [--alone 3]
        [--database sqlite|postgresql] [--pool process|docker]

Starts the stack testing/bench_stack.py starts — a Prefect server on SQLite or on
the stack's own PostgreSQL with Redis messaging, a worker on the process or the
Docker pool (the pool's limit sized to this machine: CS_POOL_CONCURRENCY unset),
the inputs worker and the cluster API — with the misbehaving sample app published
on that pool's tier (on the Docker pool: an image built from the local base image
and pushed to the local registry). Every line printed names the database and pool.
Then:

1. one simulation alone, `--alone` times (submit → web app notified): the median;
2. overhead, side by side in one run: `--pairs` interleaved pairs (0 skips them) of
   a bare no-op flow deployment on the same pool with the simulations' own job
   variables (on Docker: the same image; submit → Completed) and a simulation
   (submit → notified, minus the model's own task time); medians and their ratio
   (goal ≤ 1.0);
3. a burst: `--burst` web app clients POST a sim at once, each as C/S's compute.py
   (testing/cs_client.py: 1.7 s per attempt, five attempts): how many were
   accepted, the acknowledgement p50/p95 (retries included), the makespan until
   the last is notified, makespan ÷ (accepted × one alone ÷ pool concurrency)
   (goal ≤ 1.2), and the FAILs, platform ones ("platform error, not your model")
   counted apart (goal 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-burst-")
os.environ.pop("CS_POOL_CONCURRENCY", None)

import httpx  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect_cs.blocks.model_config import ModelConfig  # noqa: E402
from prefect_cs.deployments.deploy import create_flow_deployment, deployment_name  # noqa: E402
from prefect_cs.testing.bench_stack import (  # noqa: E402
    DATABASES,
    OWNER,
    POOL_TYPES,
    TITLE,
    BenchStack,
    bench_stack,
)
from prefect_cs.testing.noop_flow import NOOP_ENTRYPOINT  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402
from prefect_cs.work_pools.pools import SIMULATIONS_QUEUE, pool_concurrency  # noqa: E402

OK = {"control": {"behavior": [{"value": "ok"}]}}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def post_sim(client: httpx.Client) -> tuple[str, float, float]:
    """(task id, when submitted, acknowledgement seconds)."""
    task_id, started = str(uuid.uuid4()), time.monotonic()
    body = {"task_name": "sim", "tag": "v1", "task_id": task_id, "task_kwargs": {"adjustment": OK}}
    r = client.post(f"/{OWNER}/{TITLE}/", json=body)
    assert r.status_code == 200, r.text
    return task_id, started, time.monotonic() - started


def one_alone(client: httpx.Client, stub: WebAppStub) -> tuple[float, float]:
    """(submit → notified, the model's task time) of one simulation on a quiet pool."""
    task_id, started, _ = post_sim(client)
    put = stub.first_about(task_id, 300)
    assert put.body["status"] == "SUCCESS", put.body
    return put.received - started, sum(put.body["meta"]["task_times"])


def noop_deployment(bench: BenchStack):
    """The bare no-op flow on the simulations' pool and queue, with the model's simulate job
    variables (on Docker: its image and command), so only the flow differs."""
    with get_client(sync_client=True) as c:
        model = ModelConfig.for_model(OWNER, TITLE)
        simulate = c.read_deployment_by_name(deployment_name(model))
        return create_flow_deployment(
            c,
            NOOP_ENTRYPOINT,
            "noop",
            bench.pool,
            work_queue_name=SIMULATIONS_QUEUE,
            job_variables=simulate.job_variables,
        )


def noop_run(deployment_id) -> float:
    """Submit → Completed of the bare flow, polled every 0.1 s."""
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        while not (run.state and run.state.is_final()):
            time.sleep(0.1)
            run = client.read_flow_run(run.id)
    assert run.state.is_completed(), run.state
    return time.monotonic() - started


def overhead_pairs(client: httpx.Client, bench: BenchStack, noop_id, pairs: int) -> None:
    bare, simulate = [], []
    for _ in range(pairs):
        bare.append(noop_run(noop_id))
        total, model_time = one_alone(client, bench.stub)
        simulate.append(total - model_time)
    b, s = statistics.median(bare), statistics.median(simulate)
    print(
        f"{bench.label}: overhead, {pairs} interleaved pairs: bare no-op flow p50 {b:.2f} s;"
        f" simulate minus model time p50 {s:.2f} s; ratio {s / b:.2f} (goal ≤ 1.0)",
        flush=True,
    )


def burst(bench: BenchStack, count: int, alone: float) -> None:
    """`count` web app clients at once, each as C/S's compute.py (1.7 s, five attempts)."""
    from prefect_cs.testing.cs_client import ComputeStudioClient, WorkersUnreachableError

    def submit(_: int) -> tuple[str | None, float]:
        task_id, began = str(uuid.uuid4()), time.monotonic()
        kwargs = {"meta_param_dict": {}, "adjustment": OK}
        client = ComputeStudioClient(bench.url, bench.token)
        try:
            client.submit_job(OWNER, TITLE, "sim", kwargs, "v1", task_id)
        except WorkersUnreachableError:
            return None, time.monotonic() - began
        return task_id, time.monotonic() - began

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        acks = list(pool.map(submit, range(count)))
    accepted = [task_id for task_id, _ in acks if task_id]
    fails, last = {"model": 0, "platform": 0}, started
    for task_id in accepted:
        put = bench.stub.first_about(task_id, 1800)
        last = max(last, put.received)
        if put.body["status"] == "FAIL":
            platform = put.body["traceback"].startswith("platform error")
            fails["platform" if platform else "model"] += 1
    limit = pool_concurrency(bench.pool_type) or 1
    seconds = [s for _, s in acks]
    print(
        f"{bench.label}: burst of {count} web app clients (1.7 s x 5 attempts each):"
        f" {len(accepted)} accepted, ack incl. retries p50 {percentile(seconds, 50) * 1000:.0f} ms,"
        f" p95 {percentile(seconds, 95) * 1000:.0f} ms;"
        f" {makespan_ratio(last - started, len(accepted), alone, limit)};"
        f" FAILs: {fails['platform']} platform (goal 0), {fails['model']} model",
        flush=True,
    )


def makespan_ratio(makespan: float, accepted: int, alone: float, limit: int) -> str:
    """makespan ÷ (accepted × one alone ÷ pool concurrency), or why there is none."""
    if not accepted:
        return "no makespan: no submission was acknowledged"
    ideal = accepted * alone / limit
    return (
        f"makespan {makespan:.0f} s vs {accepted} x {alone:.2f} s / {limit} = {ideal:.0f} s:"
        f" ratio {makespan / ideal:.2f} (goal ≤ 1.2)"
    )


def at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more")
        return value

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=at_least(1), default=50)
    parser.add_argument("--pairs", type=at_least(0), default=10, help="0 skips the overhead")
    parser.add_argument("--alone", type=at_least(1), default=3, help="lone runs (their median)")
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument("--pool", choices=POOL_TYPES, default="process")
    args = parser.parse_args()
    with bench_stack(WORK, database=args.database, pool_type=args.pool) as bench:
        noop_id = noop_deployment(bench) if args.pairs else None
        headers = {"Authorization": f"Bearer {bench.token}"}
        limits = httpx.Limits(max_connections=args.burst)
        with httpx.Client(base_url=bench.url, headers=headers, timeout=60, limits=limits) as client:
            one_alone(client, bench.stub)  # warm: the worker's first run imports everything
            alone = statistics.median(one_alone(client, bench.stub)[0] for _ in range(args.alone))
            print(
                f"{bench.label}: one simulation alone, {args.alone} runs:"
                f" submit → notified p50 {alone:.2f} s",
                flush=True,
            )
            if args.pairs:
                overhead_pairs(client, bench, noop_id, args.pairs)
            burst(bench, args.burst, alone)


if __name__ == "__main__":
    main()
