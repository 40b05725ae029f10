"""Latency through the cluster API, as the web app sees it, on a fresh temporary stack.

    .venv/bin/python benchmarks/api_latency.py [--calls 50]

Starts a Prefect server, the inputs worker and `prefect-cs api serve` (its own
process), publishes the misbehaving sample app, then times POST /{owner}/{title}/
from an httpx client (one connection, like C/S's requests session) for: version
(warm model), defaults cached, parse acknowledgement and sim acknowledgement.
Prints p50/p95/p99 in ms; C/S's client gives each attempt 1.7 s.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prefect_cs.testing.scratch import free_port, scratch_environment  # noqa: E402

WORK = scratch_environment("cs-bench-api-")

import httpx  # noqa: E402
from prefect_cs.blocks.webapp import WebApp  # noqa: E402
from prefect_cs.security.secrets import get_backend  # noqa: E402
from prefect_cs.services import stack  # noqa: E402
from prefect_cs.testing.models import make_repo, publish_model, register_model  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402
from prefect_cs.work_pools.pools import ensure_pool  # noqa: E402

TOKEN = "bench-token"
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    server = stack.PrefectServer(api_url=stack.api_url())
    server.start()
    port = free_port()
    parts = [stack.inputs_worker(), stack.api_server(port)]
    stub = WebAppStub().start()
    try:
        stack.register_blocks()
        stack.ensure_storage_blocks()
        ensure_pool("cs-process", "process")
        WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)
        get_backend(None).set("CLUSTER_API_TOKEN", TOKEN)
        repo = make_repo("misbehaving-app", WORK / "repo")
        register_model("bench", "Misbehaving", repo, repo_tag="v1", time_limit=60)
        assert publish_model("bench", "Misbehaving").is_completed()
        for part in parts:
            part.start()
        url = f"http://127.0.0.1:{port}"
        assert stack.wait_healthy(url, parts[1], timeout=90), "the API did not start"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for body in bodies().values():  # warm: model process, defaults cache, first runs
                timed(client, body, 2)
            for name, body in bodies().items():
                t = timed(client, body, args.calls)
                print(
                    f"{name:>16}, {args.calls} calls: p50 {percentile(t, 50) * 1000:.0f} ms,"
                    f" p95 {percentile(t, 95) * 1000:.0f} ms, p99 {percentile(t, 99) * 1000:.0f} ms"
                )
    finally:
        for part in parts:
            part.stop()
        stub.stop()
        server.stop()


if __name__ == "__main__":
    main()
