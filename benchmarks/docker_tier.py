"""Figures for the Docker tier, on a fresh temporary stack with the real engine and registry.

    .venv/bin/python benchmarks/docker_tier.py [--runs 10] [--app misbehaving-app]

Needs root (it runs infra/docker/start-engine.sh and build-base-image.sh,
both idempotent). Prints:
- publish times of the sample app: cold (no build cache at all), first publish
  of a new model (platform layers cached), and a re-publish after a code-only
  change, with the ratio re-publish / cold (goal ≤ 0.2);
- simulate overhead on the Docker tier: submit → web app notified, minus the
  model's own task time, median of N runs on the tier's real worker (a process
  worker whose flows start the model's container); the latency and the task time
  it comes from, and where the time went (each state and task, from the API);
- light-call latency: `parse` answered by the shared inputs worker from the
  model's warm container (the first call starts it), median of N;
- the size of the sample app's image.

benchmarks/docker_split.py runs this script in a baseline checkout and in this
one, alternately, and prints the figures side by side.
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

WORK = scratch_environment(
    "cs-bench-docker-",
    CS_BASE_IMAGE=os.environ.get("CS_BASE_IMAGE", "cs-base:bookworm"),
)

from prefect_cs.blocks.model_config import ModelConfig  # noqa: E402
from prefect_cs.blocks.webapp import WebApp  # noqa: E402
from prefect_cs.deployments.submit import submit_simulation  # noqa: E402
from prefect_cs.services import stack_blocks, stack_parts  # noqa: E402
from prefect_cs.services.stack_parts import docker_worker  # noqa: E402
from prefect_cs.testing.docker_tier import docker_tier, ensure_docker, registry_settings  # noqa: E402
from prefect_cs.testing.models import add_tag, make_repo, publish_model, register_model  # noqa: E402
from prefect_cs.testing.run_phases import median_phases  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402
from prefect_cs.tiers.docker import DockerTier  # noqa: E402


def timed_publish(title: str, tag: str) -> float:
    started = time.perf_counter()
    with docker_tier():
        state = publish_model("bench", title, tag)
    assert state.is_completed(), state.message
    return time.perf_counter() - started


def notified_at(stub: WebAppStub, task_id: str, timeout: float = 180) -> tuple[float, dict]:
    request = stub.first_about(task_id, timeout)
    return request.received, request.body


def simulate_overhead(stub: WebAppStub, title: str, runs: int) -> dict[str, list[float]]:
    """Per run: submit → web app notified (`latency`), the model's own time as it reported it
    (`task time`), their difference (`overhead`); the flow runs' ids under `runs`."""
    figures: dict[str, list] = {"latency": [], "task time": [], "overhead": [], "runs": []}
    for _ in range(runs):
        task_id = str(uuid.uuid4())
        submitted = time.monotonic()
        run = submit_simulation(
            "bench", title, {}, {"control": {"behavior": [{"value": "ok"}]}}, task_id=task_id
        )
        received, body = notified_at(stub, task_id)
        assert body["status"] == "SUCCESS", body
        task_time = sum(body["meta"]["task_times"])
        figures["latency"].append(received - submitted)
        figures["task time"].append(task_time)
        figures["overhead"].append(received - submitted - task_time)
        figures["runs"].append(run.id)
    return figures


def print_phases(run_ids: list) -> None:
    """Where the runs' time went (testing/run_phases.py): medians, seconds after creation."""
    time.sleep(2)  # the runs' last task records reach the API
    for name, seconds in median_phases(run_ids):
        print(f"  phase {name:<22} median {seconds:6.2f} s")


def inputs_latency(title: str, runs: int) -> None:
    """`parse` through the shared inputs worker, answered by the model's warm container."""
    from prefect_cs.flows import inputs

    server = stack_parts.inputs_worker()
    server.start()
    try:
        times = []
        for _ in range(runs + 1):  # the first starts the container (and imports the model)
            started = time.perf_counter()
            answer = inputs.parse("bench", title, str(uuid.uuid4()), {}, {})
            times.append(time.perf_counter() - started)
            assert answer["status"] == "SUCCESS", answer
        print(
            f"parse through the inputs worker, docker tier: first {times[0]:.2f} s,"
            f" then median {statistics.median(times[1:]):.3f} s of {runs}"
        )
    finally:
        server.stop()


def code_change(repo: Path) -> None:
    functions = repo / "cs-config" / "cs_config" / "functions.py"
    functions.write_text(functions.read_text() + f"\n# code-only change {uuid.uuid4().hex}\n")


def image_size_mb(image: str) -> float:
    import docker

    return docker.from_env().images.get(image).attrs["Size"] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--app", default="misbehaving-app")
    parser.add_argument("--skip-cold", action="store_true", help="skip the no-cache publish")
    args = parser.parse_args()

    ensure_docker()
    server = stack_parts.PrefectServer(api_url=os.environ["PREFECT_API_URL"])
    server.start()
    os.environ.update(
        registry_settings(os.environ["CS_BASE_IMAGE"])
    )  # the registry's login as the cs-registry block
    worker = docker_worker()
    stub = WebAppStub()
    suffix = uuid.uuid4().hex[:6]
    cold_title, title = f"Cold-{suffix}", f"Bench-{suffix}"
    try:
        stack_blocks.register_blocks()
        stack_blocks.ensure_storage_blocks()
        stub.start()
        WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)

        cold_repo = make_repo(args.app, repos_folder(WORK) / "cold")
        register_model("bench", cold_title, cold_repo, repo_tag="v1", time_limit=60)
        DockerTier.no_cache = not args.skip_cold
        try:
            cold = timed_publish(cold_title, "v1")
        finally:
            DockerTier.no_cache = False

        repo = make_repo(args.app, repos_folder(WORK) / "repo")
        register_model("bench", title, repo, repo_tag="v1", time_limit=60, memory="1Gi")
        first = timed_publish(title, "v1")
        add_tag(repo, "v2", "code only", code_change)
        again = timed_publish(title, "v2")
        kind = "with build cache (--skip-cold)" if args.skip_cold else "cold (no build cache)"
        print(f"publish {args.app}, {kind}: {cold:.1f} s")
        print(
            f"publish of a second model from the same sources (every layer cached): {first:.1f} s"
        )
        print(
            f"re-publish after a code-only change: {again:.1f} s;"
            f" ratio re-publish / cold {again / cold:.2f} (goal ≤ 0.2)"
        )
        image = ModelConfig.for_model("bench", title).published().image
        print(f"image {image}: {image_size_mb(image):.0f} MB")

        worker.start()
        time.sleep(3)
        figures = simulate_overhead(stub, title, args.runs)
        overhead = figures["overhead"]
        print(
            f"simulate overhead, docker pool, {args.runs} runs: median"
            f" {statistics.median(overhead):.2f} s"
            f" (min {min(overhead):.2f}, max {max(overhead):.2f})"
        )
        print(
            f"simulate latency (submit → web app notified): median"
            f" {statistics.median(figures['latency']):.2f} s; the model's own task time: median"
            f" {statistics.median(figures['task time']):.2f} s"
        )
        print_phases(figures["runs"])
        inputs_latency(title, args.runs)
    finally:
        worker.stop()
        stub.stop()
        server.stop()


if __name__ == "__main__":
    main()
