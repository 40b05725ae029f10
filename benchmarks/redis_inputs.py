"""Inputs handoff through Redis: what it adds to one simulation, by input size.

    .venv/bin/python benchmarks/redis_inputs.py [--runs 10]

Starts a real redis-server on loopback with the platform's ACL, then times
`stage_inputs`' write (scheduler user, fresh connection, as the submitter does)
and the job's read (executor user, fresh connection), median of N runs per size.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_cs.security.redis_acl import get_job_inputs, init_acl, put_job_inputs  # noqa: E402
from prefect_cs.testing.redis_server import RedisServer, make_config  # noqa: E402

SIZES = [1_000, 100_000, 1_000_000, 5_000_000, 20_000_000, 50_000_000]


def inputs_of(size: int) -> dict:
    return {
        "meta_param_dict": {"year": 2026},
        "adjustment": {"bulk": {"data": [{"value": secrets.token_hex(size // 2)}]}},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with RedisServer(Path(tempfile.mkdtemp(prefix="cs-bench-redis-"))) as server:
        config = make_config(server.port)
        init_acl(config)
        print(
            f"{'inputs':>10}  {'write ms':>9}  {'read ms':>8}  {'total ms':>9}  (median of"
            f" {args.runs})"
        )
        for size in SIZES:
            data = inputs_of(size)
            writes, reads = [], []
            for _ in range(args.runs):
                task_id = str(uuid.uuid4())
                t0 = time.perf_counter()
                put_job_inputs(config, task_id, data, ttl_seconds=60)
                t1 = time.perf_counter()
                assert get_job_inputs(config, task_id) == data
                t2 = time.perf_counter()
                writes.append((t1 - t0) * 1000)
                reads.append((t2 - t1) * 1000)
            w, r = statistics.median(writes), statistics.median(reads)
            print(f"{size / 1e6:>8.3f}MB  {w:>9.1f}  {r:>8.1f}  {w + r:>9.1f}")


if __name__ == "__main__":
    main()
