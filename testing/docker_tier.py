"""Real Docker parts for the tests: the engine, a registry on 127.0.0.1:5000, the local base image.

CI has Docker, so nothing here skips: when the engine cannot be started the
tests fail and say why.
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SCRIPTS = Path(__file__).resolve().parents[1] / "deployments" / "docker"
REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "cs-base:bookworm"


def ensure_docker() -> None:
    """Start dockerd and the registry if needed, build the base image if missing (both idempotent)."""
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


def registry_tags(repository: str) -> list[str]:
    """The tags the registry holds for `repository` (name without the host)."""
    response = httpx.get(f"http://{REGISTRY}/v2/{repository}/tags/list", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return response.json().get("tags") or []


def containers(label: str, all_states: bool = True) -> list[str]:
    """Ids of the containers with `label` (the low-level list: no inspect that could race a removal)."""
    import docker

    found = docker.from_env().api.containers(all=all_states, filters={"label": label})
    return [c["Id"] for c in found]


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


class AuthRegistry:
    """Debian's docker-registry with htpasswd auth on a loopback port, in a temporary folder."""

    def __init__(self, workdir: Path, username: str, password: str, port: int = 5001) -> None:
        with warnings.catch_warnings():  # deprecated, still in 3.11/3.12; the registry needs bcrypt
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        self.workdir, self.port = Path(workdir), port
        self.host = f"127.0.0.1:{port}"
        (self.workdir / "htpasswd").write_text(
            f"{username}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
        )
        (self.workdir / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            f"http:\n  addr: {self.host}\n"
            f"auth:\n  htpasswd:\n    realm: cs-test\n    path: {self.workdir / 'htpasswd'}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> AuthRegistry:
        log = (self.workdir / "registry.log").open("ab")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.workdir / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 401:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not start on {self.host}; see {self.workdir}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
