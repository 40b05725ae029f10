"""What a model's child process gets: its runner, its environment, and the scrubbing of its
secrets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import NotConfigured
from prefect_cs.core.names import model_code_secrets, secret_env_name
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.model_process import CHILD_SCRIPT

RUNTIME_DIR = "cs-runtime"


def runner_for(python: str) -> str:
    """The copy of child.py installed in the model environment at publish; the platform's own as
    fallback."""
    installed = Path(python).parent.parent / RUNTIME_DIR / CHILD_SCRIPT.name
    return str(installed if installed.exists() else CHILD_SCRIPT)


def declared_secrets(model: ModelConfig) -> dict[str, str]:
    """The model's declared secrets, never from the flow's own environment (on the process tier
    that is the operator's): from the secrets backend, or in a container job started with them
    by reference (Docker: block references resolved at container start; Kubernetes:
    secretKeyRef) from the `CS_SECRET_<name>` variables the job carries, which nothing else sets."""
    names = model_code_secrets(model.secrets)  # never the webhook key a model may declare
    if not names:
        return {}
    if _secrets_source() == "pod":  # a Job's flow container: only the model container has them
        return {}
    if _secrets_source() != "env":
        from prefect_cs.security.secrets import model_secret_env

        return model_secret_env(model.owner, model.title, names)
    found = {name: os.environ.get(secret_env_name(name), "") for name in names}
    missing = [name for name, value in found.items() if not value]
    if missing:
        raise NotConfigured(
            f"secrets {', '.join(missing)} of {model.owner}/{model.title} are not in the job's"
            " environment: apply the model's Secret (`prefect-cs k8s render`) or re-deploy the"
            " model (`prefect-cs models publish --steps promote`), and re-run"
        )
    return found


def _secrets_source() -> str | None:
    """`env`: secrets come only as the job's CS_SECRET_* variables; `pod` (a Kubernetes Job's flow
    container, work_pools/kubernetes.json): the model container has them, the flow none."""
    from prefect_cs.core.settings import get_settings

    return get_settings().secrets.secrets_source


def memory_rlimit_mib(model: ModelConfig) -> int | None:
    """An address-space limit for the child, unless a container's cgroup already bounds memory
    (more precisely: it counts resident memory, and its OOM kill is reported as such)."""
    from prefect_cs.core.settings import get_settings

    return None if get_settings().memory_by_container else model.memory_limit_mib


def call_bounds(model: ModelConfig) -> Bounds:
    """The kernel bounds of one call of the model's code (confinement.py): its declared memory
    x memory_limit_factor (unless a container's cgroup already holds it), pids, CPUs, disk."""
    return Bounds(
        memory_mib=memory_rlimit_mib(model),
        pids=model.pids,
        cpus=model.cpu,
        disk_mib=model.disk_mib,
    )


def model_env(model: ModelConfig) -> dict[str, str]:
    """Declared secrets plus thread counts matched to the model's CPU share."""
    threads = str(max(1, int(model.cpu)))
    env = {name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["MALLOC_ARENA_MAX"] = "2"
    env.update(declared_secrets(model))
    return env


def secrets_to_mask(model: ModelConfig) -> list[str]:
    """The values to mask. In a Kubernetes Job's flow container (`pod`) the model's secrets are
    not the flow's to give (the model container has them by reference); the flow gets its own
    references under `CS_SECRET_<name>` (work_pools/kubernetes.json `mask_env`) to mask with."""
    if _secrets_source() == "pod":
        names = model_code_secrets(model.secrets)
        return [value for name in names if (value := os.environ.get(secret_env_name(name)))]
    return list(declared_secrets(model).values())


def scrubber_for(model: ModelConfig) -> Callable[[Any], Any]:
    """Masks the model's secret values in anything leaving the job (payloads, logs, outputs)."""
    from prefect_cs.security.scrubber import Scrubber

    try:
        return Scrubber(secrets_to_mask(model))
    except LookupError:  # a secret that is not set never reached the model: nothing to mask
        return Scrubber([])
