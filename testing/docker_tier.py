"""Real Docker parts for the tests: the engine, a registry on 127.0.0.1:5000, the local base image.

CI has Docker, so nothing here skips: when the engine cannot be started the
tests fail and say why. The registry asks for a login on every push and pull
(infra/docker/start-engine.sh): the tests publish with it through the
`cs-registry` block, as an operator does after `prefect-cs docker up`, and read
the registry's API with it (they run as root, as the file requires).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SCRIPTS = Path(__file__).resolve().parents[1] / "infra" / "docker"
REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "cs-base:bookworm"
REGISTRY_BLOCK = "cs-registry"


def ensure_docker() -> None:
    """Start dockerd and the registry if needed, build the base image if missing (both
    idempotent)."""
    for script, args, timeout in (
        ("start-engine.sh", [], 120),
        ("build-base-image.sh", [BASE_IMAGE], 900),
    ):
        result = subprocess.run(
            ["bash", str(SCRIPTS / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{script} failed (the docker tier tests need a Docker engine and root):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )


def registry_auth() -> tuple[str, str]:
    """(username, password) of the local registry, from start-engine.sh's root-only file."""
    from prefect_cs.tiers.docker import local_registry_login

    login = local_registry_login()
    return login["username"], login["password"]


def registry_settings(base_image: str = BASE_IMAGE) -> dict[str, str]:
    """Save the registry's login as the `cs-registry` block (needs the Prefect API) and return
    the settings a docker-tier publish to 127.0.0.1:5000 runs with."""
    from prefect_cs.tiers.docker import save_registry_block

    save_registry_block(REGISTRY_BLOCK)
    return {"CS_REGISTRY_BLOCK": REGISTRY_BLOCK, "CS_BASE_IMAGE": base_image}


@contextmanager
def docker_tier() -> Iterator[None]:
    """Publish on the docker tier inside the block, on whatever tier was set before outside it."""
    previous = os.environ.get("CS_TIER")
    os.environ["CS_TIER"] = "docker"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CS_TIER", None)
        else:
            os.environ["CS_TIER"] = previous


@contextmanager
def docker_ready() -> Iterator[None]:
    """The engine and registry up, and this process pointed at them (the registry's login as
    settings), restored afterwards: what a test module that publishes on Docker needs."""
    ensure_docker()
    settings = registry_settings()
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def registry_tags(repository: str) -> list[str]:
    """The tags the registry holds for `repository` (name without the host)."""
    response = httpx.get(
        f"http://{REGISTRY}/v2/{repository}/tags/list", auth=registry_auth(), timeout=10
    )
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return response.json().get("tags") or []


def containers(label: str, all_states: bool = True) -> list[str]:
    """Ids of the containers with `label` (the low-level list: no inspect that could race a
    removal)."""
    import docker

    found = docker.from_env().api.containers(all=all_states, filters={"label": label})
    return [c["Id"] for c in found]


def container_names_and_ids() -> set[str]:
    """Every container's name and id, from one low-level list: `containers.list` inspects each
    one and fails with NotFound when another test's container is removed meanwhile."""
    import docker

    found = docker.from_env().api.containers(all=True)
    return {c["Id"] for c in found} | {n.lstrip("/") for c in found for n in c["Names"]}


def wait_for_container(label: str, timeout: float = 90) -> object:
    import docker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ident in containers(label, all_states=False):
            try:
                return docker.from_env().containers.get(ident)
            except docker.errors.NotFound:
                pass
        time.sleep(0.3)
    raise AssertionError(f"no running container labelled {label} within {timeout}s")


def layer_ids(image: str, marker: str) -> list[str]:
    """Ids of the build steps of `image` whose command contains `marker`."""
    import docker

    history = docker.from_env().images.get(image).history()
    return [h["Id"] for h in history if marker in (h.get("CreatedBy") or "")]
