"""Load on the GitHub webhook receiver, on a fresh temporary stack.

    .venv/bin/python benchmarks/webhook_load.py [--deliveries 200] [--seconds 10] [--running 10]

Phase 1: DELIVERIES tag-push deliveries spread over SECONDS, a quarter of them
re-sends of earlier deliveries (half with the same X-GitHub-Delivery, half
replays: the same signed body under a new id) and a tenth forged (wrong
signature). Checks exactly one publish flow run per unique valid delivery
and none for the rest; prints counts, the receiver's response time
p50/p99, and delivery → flow run created (median, p95).
Phase 2: RUNNING deliveries, one every 2 s, with a real process worker (fast
polling): delivery → flow run Running (median). Those runs then fail at the
clone step (the model's repository is not reachable here): only the time to
Running is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_cs.testing.scratch import scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-webhook-")

import httpx  # noqa: E402
from prefect_cs.blocks.model_config import ModelConfig  # noqa: E402
from prefect_cs.deployments.deploy import deploy_publish  # noqa: E402
from prefect_cs.deployments.triggers import PublishRequest  # noqa: E402
from prefect_cs.registry.configs import register  # noqa: E402
from prefect_cs.security.secrets import get_backend  # noqa: E402
from prefect_cs.services import stack_blocks, stack_parts  # noqa: E402
from prefect_cs.testing.webhooks import (  # noqa: E402
    deliver,
    new_sha,
    publish_runs,
    start_receiver,
    stop_receiver,
    tag_push,
)
from prefect_cs.work_pools.pools import ensure_pool  # noqa: E402

MODEL_REPO = "bench-org/model"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def plan(total: int) -> list[dict]:
    """The delivery mix: forged tenth, re-sent quarter (earlier valid ones, every other one
    under a new delivery id: a replay)."""
    forged, duplicates = total // 10, total // 4
    unique = total - forged - duplicates
    items = [
        {"kind": "valid", "sha": new_sha(), "delivery": str(uuid.uuid4())} for _ in range(unique)
    ]
    items += [
        {"kind": "forged", "sha": new_sha(), "delivery": str(uuid.uuid4())} for _ in range(forged)
    ]
    random.shuffle(items)
    originals = [item for item in items if item["kind"] == "valid"]
    for n in range(duplicates):  # a re-send lands after its original
        original = random.choice(originals)
        after = next(j for j, item in enumerate(items) if item is original)
        resend = {**original, "kind": "duplicate"}
        if n % 2:
            resend |= {"kind": "replayed", "delivery": str(uuid.uuid4())}
        items.insert(random.randint(after + 1, len(items)), resend)
    return items


def send_all(url: str, secret: str, items: list[dict], seconds: float) -> None:
    """Each delivery at its slot in the window; records status, response time and send time."""
    start = time.monotonic()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))

    def send(i: int) -> None:
        item = items[i]
        time.sleep(max(0.0, start + i * seconds / len(items) - time.monotonic()))
        key = secret if item["kind"] != "forged" else "forged-" + secret[:4]
        item["sent"] = time.time()
        t0 = time.perf_counter()
        response = deliver(
            url,
            key,
            "push",
            tag_push(MODEL_REPO, "v-" + item["sha"][:8], item["sha"]),
            item["delivery"],
            client=client,
        )
        item["seconds"] = time.perf_counter() - t0
        item["status"] = response.status_code
        item["answer"] = answer_of(response)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, range(len(items))))
    client.close()


def answer_of(response: httpx.Response) -> str:
    """`accepted`, `ignored (duplicate delivery)`, `ignored (duplicate body)`, or `401`."""
    if response.status_code == 401:
        return "401"
    body = response.json()
    reason = body.get("reason", "")
    return f"{body.get('status')} ({reason.split(':')[0]})" if reason else str(body.get("status"))


def wait_for_shas(deployment_id, shas: set[str], timeout: float) -> list:
    """Until every sha has a run (bounded): automations work through a backlog under load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = publish_runs(deployment_id)
        if shas <= {run.parameters.get("sha") for run in runs}:
            return runs
        time.sleep(0.5)
    return publish_runs(deployment_id)


def events_received(event_ids: list[str]) -> dict[str, float]:
    """When the server received each event (by id): splits receiver → server from automation
    time."""
    received: dict[str, float] = {}
    api = os.environ["PREFECT_API_URL"]
    for start in range(0, len(event_ids), 50):
        body = {"filter": {"id": {"id": event_ids[start : start + 50]}}, "limit": 50}
        page = httpx.post(f"{api}/events/filter", json=body, timeout=30).json()
        for event in page.get("events", []):
            received[event["id"]] = datetime.fromisoformat(event["received"]).timestamp()
    return received


def created_seconds(run) -> float:
    created = run.created
    return created.timestamp() if isinstance(created, datetime) else float(created)


def phase_load(url: str, secret: str, deployment_id, total: int, seconds: float) -> dict:
    items = plan(total)
    began = time.monotonic()
    send_all(url, secret, items, seconds)
    sent_in = time.monotonic() - began
    unique = {i["sha"]: i for i in items if i["kind"] == "valid"}
    forged = {i["sha"] for i in items if i["kind"] == "forged"}
    wait_for_shas(deployment_id, set(unique), timeout=300)
    time.sleep(5)  # settle: anything extra (a duplicate, a forgery) would show by now
    runs = publish_runs(deployment_id)
    by_sha: dict[str, list] = {}
    for run in runs:
        by_sha.setdefault(run.parameters.get("sha"), []).append(run)
    latencies = [created_seconds(by_sha[s][0]) - unique[s]["sent"] for s in unique if s in by_sha]
    ids = {
        s: str(PublishRequest("bench", "Model", None, "all", i["delivery"]).event_id())
        for s, i in unique.items()
    }
    received = events_received(list(ids.values()))
    to_server = [received[ids[s]] - unique[s]["sent"] for s in unique if ids[s] in received]
    times = [i["seconds"] for i in items]
    return {
        "deliveries": len(items),
        "sent_in_seconds": round(sent_in, 2),
        "unique_valid": len(unique),
        "duplicates": sum(i["kind"] == "duplicate" for i in items),
        "replayed": sum(i["kind"] == "replayed" for i in items),
        "forged": len(forged),
        "answers": {
            kind: sorted({f"{i['status']} {i['answer']}" for i in items if i["kind"] == kind})
            for kind in ("valid", "duplicate", "replayed", "forged")
        },
        "publish_runs_total": len(runs),
        "unique_with_exactly_one_run": sum(len(by_sha.get(s, [])) == 1 for s in unique),
        "unique_with_no_run": sum(s not in by_sha for s in unique),
        "unique_with_more_than_one_run": sum(len(by_sha.get(s, [])) > 1 for s in unique),
        "forged_with_a_run": sum(s in by_sha for s in forged),
        "response_p50_ms": round(percentile(times, 50) * 1000, 1),
        "response_p99_ms": round(percentile(times, 99) * 1000, 1),
        "events_received_by_server": len(to_server),
        "delivery_to_event_received_median_s": round(statistics.median(to_server), 2),
        "delivery_to_event_received_p95_s": round(percentile(to_server, 95), 2),
        "delivery_to_run_created_min_s": round(min(latencies), 2),
        "delivery_to_run_created_median_s": round(statistics.median(latencies), 2),
        "delivery_to_run_created_p95_s": round(percentile(latencies, 95), 2),
    }


def delete_runs(deployment_id) -> None:
    """Phase 1's runs are not for executing: remove them so the worker sees only phase 2's."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in publish_runs(deployment_id):
            client.delete_flow_run(run.id)


def phase_running(url: str, secret: str, deployment_id, count: int) -> dict:
    delete_runs(deployment_id)
    worker = stack_parts.process_worker()
    worker.start()
    time.sleep(5)  # let the worker register with its pool
    sent: dict[str, float] = {}
    try:
        for _ in range(count):
            sha = new_sha()
            sent[sha] = time.time()
            response = deliver(url, secret, "push", tag_push(MODEL_REPO, "r-" + sha[:8], sha))
            assert response.status_code == 202, response.text
            time.sleep(2)
        deadline, started, created = time.monotonic() + 180, {}, {}
        while time.monotonic() < deadline and len(started) < count:
            for run in publish_runs(deployment_id):
                sha = run.parameters.get("sha")
                if sha in sent:
                    created[sha] = created_seconds(run) - sent[sha]
                    if run.start_time is not None:
                        started[sha] = run.start_time.timestamp() - sent[sha]
            time.sleep(0.5)
    finally:
        worker.stop()
    values = list(started.values())
    return {
        "running_deliveries": count,
        "reached_running": len(values),
        "delivery_to_run_created_median_s": round(statistics.median(created.values()), 2)
        if created
        else None,
        "delivery_to_running_median_s": round(statistics.median(values), 2) if values else None,
        "delivery_to_running_max_s": round(max(values), 2) if values else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--running", type=int, default=10, help="0 skips phase 2")
    args = parser.parse_args()

    server = stack_parts.PrefectServer(api_url=os.environ["PREFECT_API_URL"], home=WORK / "prefect")
    server.start()
    receiver = None
    try:
        stack_blocks.register_blocks()
        ensure_pool("cs-process", "process")
        deployment_id = deploy_publish()
        register(
            ModelConfig(owner="bench", title="Model", repo_url=f"https://github.com/{MODEL_REPO}")
        )
        secret = secrets.token_urlsafe(32)
        get_backend(None).set("GITHUB_WEBHOOK_SECRET", secret)
        receiver, url = start_receiver(
            {
                "CS_WEBHOOK_DB_PATH": str(WORK / "deliveries.sqlite3"),
                # one model, 130 publishes: measured without the per-model limit (30 an hour)
                "CS_WEBHOOK_PUBLISHES_PER_HOUR": "0",
            },
            WORK / "receiver.log",
        )
        results = phase_load(url, secret, deployment_id, args.deliveries, args.seconds)
        print(json.dumps(results, indent=2), flush=True)
        if args.running:
            print(json.dumps(phase_running(url, secret, deployment_id, args.running), indent=2))
        ok = (
            results["unique_with_exactly_one_run"] == results["unique_valid"]
            and results["forged_with_a_run"] == 0
            and results["publish_runs_total"] == results["unique_valid"]
        )
        print(
            "RESULT:",
            "exactly one publish per unique valid delivery, none else" if ok else "MISMATCH",
        )
        if not ok:
            sys.exit(1)
    finally:
        if receiver is not None:
            stop_receiver(receiver)
        server.stop()


if __name__ == "__main__":
    main()
