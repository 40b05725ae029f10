"""Bursts and overhead on the process pool, on a fresh temporary stack (issue 12's figures).

    .venv/bin/python benchmarks/burst.py [--burst 50] [--pairs 10]

Starts a Prefect server (SQLite), a process worker, the inputs worker and the
cluster API as `stack start` does — the pool's limit sized to this machine
(CS_POOL_CONCURRENCY unset) — and publishes the misbehaving sample app. Then:

1. one simulation alone, three times (submit → web app notified): the median;
2. overhead, side by side in one run: `--pairs` interleaved pairs of a bare no-op
   flow deployment on the same pool (submit → Completed) and a simulation
   (submit → notified, minus the model's own task time); medians and their ratio;
3. a burst: `--burst` web app clients POST a sim at once, each as C/S's compute.py
   (testing/cs_client.py: 1.7 s per attempt, five attempts): how many were
   accepted, the acknowledgement p50/p95 (retries included), the makespan until
   the last is notified, makespan ÷ (accepted × one alone ÷ pool concurrency), and
   the FAILs, platform ones ("platform error, not your model") counted apart.
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
from prefect_cs.testing.scratch import free_port, scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-burst-")
os.environ.pop("CS_POOL_CONCURRENCY", None)

import httpx  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect_cs.blocks.webapp import WebApp  # noqa: E402
from prefect_cs.deployments.deploy import create_flow_deployment  # noqa: E402
from prefect_cs.security.secrets import get_backend  # noqa: E402
from prefect_cs.services import stack  # noqa: E402
from prefect_cs.testing.models import make_repo, publish_model, register_model  # noqa: E402
from prefect_cs.testing.noop_flow import NOOP_ENTRYPOINT  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402
from prefect_cs.work_pools.pools import SIMULATIONS_QUEUE, ensure_pool, pool_concurrency  # noqa: E402

TOKEN = "bench-token"
OK = {"control": {"behavior": [{"value": "ok"}]}}
POOL = "cs-process"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def post_sim(client: httpx.Client) -> tuple[str, float, float]:
    """(task id, when submitted, acknowledgement seconds)."""
    task_id, started = str(uuid.uuid4()), time.monotonic()
    body = {"task_name": "sim", "tag": "v1", "task_id": task_id, "task_kwargs": {"adjustment": OK}}
    r = client.post("/bench/Misbehaving/", json=body)
    assert r.status_code == 200, r.text
    return task_id, started, time.monotonic() - started


def one_alone(client: httpx.Client, stub: WebAppStub) -> tuple[float, float]:
    """(submit → notified, the model's task time) of one simulation on a quiet pool."""
    task_id, started, _ = post_sim(client)
    put = stub.first_about(task_id, 300)
    assert put.body["status"] == "SUCCESS", put.body
    return put.received - started, sum(put.body["meta"]["task_times"])


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


def overhead_pairs(client: httpx.Client, stub: WebAppStub, noop_id, pairs: int) -> None:
    bare, simulate = [], []
    for _ in range(pairs):
        bare.append(noop_run(noop_id))
        total, model_time = one_alone(client, stub)
        simulate.append(total - model_time)
    b, s = statistics.median(bare), statistics.median(simulate)
    print(
        f"overhead, {pairs} interleaved pairs: bare no-op flow p50 {b:.2f} s;"
        f" simulate minus model time p50 {s:.2f} s; ratio {s / b:.2f}",
        flush=True,
    )


def burst(url: str, stub: WebAppStub, count: int, alone: float) -> None:
    """`count` web app clients at once, each as C/S's compute.py (1.7 s, five attempts)."""
    from prefect_cs.testing.cs_client import ComputeStudioClient, WorkersUnreachableError

    def submit(_: int) -> tuple[str | None, float]:
        task_id, began = str(uuid.uuid4()), time.monotonic()
        kwargs = {"meta_param_dict": {}, "adjustment": OK}
        client = ComputeStudioClient(url, TOKEN)
        try:
            client.submit_job("bench", "Misbehaving", "sim", kwargs, "v1", task_id)
        except WorkersUnreachableError:
            return None, time.monotonic() - began
        return task_id, time.monotonic() - began

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        acks = list(pool.map(submit, range(count)))
    accepted = [task_id for task_id, _ in acks if task_id]
    fails, last = {"model": 0, "platform": 0}, started
    for task_id in accepted:
        put = stub.first_about(task_id, 1800)
        last = max(last, put.received)
        if put.body["status"] == "FAIL":
            platform = put.body["traceback"].startswith("platform error")
            fails["platform" if platform else "model"] += 1
    makespan, limit = last - started, pool_concurrency("process") or 1
    ideal = max(1, len(accepted)) * alone / limit
    seconds = [s for _, s in acks]
    print(
        f"burst of {count} web app clients (1.7 s x 5 attempts each): {len(accepted)} accepted,"
        f" ack incl. retries p50 {percentile(seconds, 50) * 1000:.0f} ms,"
        f" p95 {percentile(seconds, 95) * 1000:.0f} ms; makespan {makespan:.0f} s vs"
        f" {len(accepted)} x {alone:.2f} s / {limit} = {ideal:.0f} s: ratio {makespan / ideal:.2f};"
        f" FAILs: {fails['platform']} platform, {fails['model']} model",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    server = stack.PrefectServer(api_url=stack.api_url())
    server.start()
    port = free_port()
    parts = [stack.process_worker(), stack.inputs_worker(), stack.api_server(port)]
    stub = WebAppStub().start()
    try:
        stack.register_blocks()
        stack.ensure_storage_blocks()
        ensure_pool(POOL, "process")
        WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)
        get_backend(None).set("CLUSTER_API_TOKEN", TOKEN)
        repo = make_repo("misbehaving-app", WORK / "repo")
        register_model("bench", "Misbehaving", repo, repo_tag="v1", time_limit=60)
        assert publish_model("bench", "Misbehaving").is_completed()
        with get_client(sync_client=True) as c:
            noop_id = create_flow_deployment(
                c, NOOP_ENTRYPOINT, "noop", POOL, work_queue_name=SIMULATIONS_QUEUE
            )
        for part in parts:
            part.start()
        url = f"http://127.0.0.1:{port}"
        assert stack.wait_healthy(url, parts[2], timeout=120), "the API did not start"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        limits = httpx.Limits(max_connections=args.burst)
        with httpx.Client(base_url=url, headers=headers, timeout=60, limits=limits) as client:
            one_alone(client, stub)  # warm: the worker's first run imports everything
            alone = statistics.median(one_alone(client, stub)[0] for _ in range(3))
            print(f"one simulation alone: submit → notified p50 {alone:.2f} s", flush=True)
            overhead_pairs(client, stub, noop_id, args.pairs)
            burst(url, stub, args.burst, alone)
    finally:
        for part in parts:
            part.stop()
        stub.stop()
        server.stop()


if __name__ == "__main__":
    main()
