"""Runs a rendered Kubernetes Job's container with Docker: the Job's spec, checked end to end.

Kubernetes cannot run on the test machines; Docker can. `docker_run_args`
turns the Job's container (image, command, args, env, limits) into a
`docker run` command line. `secretKeyRef` entries are resolved here from the
secrets backend, as the kubelet would from the model's Secret, and passed by
name only (`-e NAME` with the value in the child's environment), so no value
appears in the command line or a process listing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
SecretResolver = Callable[[str, str], str]


def cpu_cores(quantity: str) -> str:
    """ "2" -> "2", "500m" -> "0.5": Docker's --cpus."""
    match = _QUANTITY.match(str(quantity))
    if not match or match.group(2) not in (None, "m"):
        raise ValueError(f"not a Kubernetes CPU quantity: {quantity!r} (e.g. '2' or '500m')")
    number = float(match.group(1)) / (1000 if match.group(2) == "m" else 1)
    return f"{number:g}"


def memory_bytes(quantity: str) -> int:
    """ "5120Mi" -> 5368709120: Docker's --memory, in bytes."""
    match = _QUANTITY.match(str(quantity))
    if not match or match.group(2) == "m":
        raise ValueError(f"not a Kubernetes memory quantity: {quantity!r} (e.g. '4Gi')")
    return int(float(match.group(1)) * _MEMORY_FACTORS[match.group(2)])


def job_container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def container_env(
    container: dict[str, Any], resolve_secret: SecretResolver
) -> tuple[dict[str, str], set[str]]:
    """(environment, names of the entries that are secrets)."""
    env: dict[str, str] = {}
    secrets: set[str] = set()
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise ValueError(
                f"env {entry['name']!r} uses a valueFrom other than secretKeyRef: not runnable with Docker"
            )
        env[entry["name"]] = resolve_secret(ref["name"], ref["key"])
        secrets.add(entry["name"])
    return env, secrets


def docker_run_args(
    job: dict[str, Any], resolve_secret: SecretResolver, name: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `docker run` argv and the environment to start it with.

    Every variable is passed as `-e NAME` (value taken from the returned
    environment), so values, secret or not, never sit in the argv.
    """
    container = job_container(job)
    env, _secrets = container_env(container, resolve_secret)
    limits = container.get("resources", {}).get("limits", {})
    argv = ["docker", "run", "--rm"]
    if name:
        argv += ["--name", name]
    if "cpu" in limits:
        argv += ["--cpus", cpu_cores(limits["cpu"])]
    if "memory" in limits:
        argv += ["--memory", str(memory_bytes(limits["memory"]))]
    for key in env:
        argv += ["-e", key]
    command = container.get("command")
    if command:
        argv += ["--entrypoint", command[0]]
    argv.append(container["image"])
    argv += list(command[1:] if command else []) + list(container.get("args", []))
    return argv, env


def backend_resolver(owner: str, title: str) -> SecretResolver:
    """Resolve a model Secret's keys from the secrets backend (model scope first, then cluster),
    and the API login's Secret from this machine's login (what the operator put in it)."""
    from prefect_cs.deployments.kubernetes import api_credential_secrets
    from prefect_cs.security.secrets import model_secret_env

    def resolve(secret_name: str, key: str) -> str:
        if (secret_name, key) == api_credential_secrets()["PREFECT_API_AUTH_STRING"]:
            return os.environ["PREFECT_API_AUTH_STRING"]
        return model_secret_env(owner, title, [key])[key]

    return resolve
