"""A model's inputs server on the Docker tier: its own image, running the inputs task worker for it alone.

On the container tiers a model's environment exists only in its image, so the
web app's light calls (version, defaults, parse) are answered by a long-running
container of that image, subscribed to the model's own task keys
(CS_INPUTS_MODEL, see services/inputs_server.py). It shares the task storage folder with
the callers, as background tasks require. On Kubernetes the same server is a
Deployment (`prefect-cs k8s render`).
"""

from __future__ import annotations

import os
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import NotFound
from prefect_cs.core.settings import forwarded_environment
from prefect_cs.core.task_storage import TASK_STORAGE_BLOCK, task_storage_env
from prefect_cs.tiers.docker import MODEL_UID, PLATFORM_VENV, docker_client, ensure_image

LABEL = "cs.compute.studio/inputs-server"


def container_name(model: ModelConfig) -> str:
    return f"cs-inputs-{model.slug}"


def image_entry(model: ModelConfig) -> PublishedTag:
    """The promoted tag's image; a clear error when the model is not on a container tier."""
    entry = model.published()
    if not entry.image:
        raise NotFound(
            f"{model.owner}/{model.title}@{entry.tag} is on the {entry.tier} tier, without an image:"
            " its inputs are served by the local inputs worker (`prefect-cs stack start`)"
        )
    return entry


def task_storage_volume() -> dict[str, dict[str, str]]:
    """The folder of the task storage block, mounted at the same path: callers read results there."""
    from prefect.blocks.core import Block

    basepath = getattr(Block.load(TASK_STORAGE_BLOCK, _sync=True), "basepath", None)
    if not basepath:
        return {}  # a bucket: nothing to mount
    return {basepath: {"bind": basepath, "mode": "rw"}}


def server_environment(model: ModelConfig) -> dict[str, str]:
    """What the task worker needs: the API and its login, the model it serves, the shared task
    storage, and the same forwarded settings as a job (core.settings.forwarded_environment)."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    return {
        **forwarded_environment(),
        "PREFECT_API_URL": os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"),
        **({"PREFECT_API_AUTH_STRING": auth} if auth else {}),
        "CS_INPUTS_MODEL": f"{model.owner}/{model.title}",
        "CS_MEMORY_BY_CONTAINER": "true",
        "CS_SANDBOX": "uid",  # warm model processes run as CS_MODEL_UID, not as the server
        "CS_MODEL_UID": str(MODEL_UID),
        **task_storage_env(),
    }


def start_inputs_server(owner: str, title: str) -> str:
    """(Re)start the model's inputs server on its promoted image; returns the container name."""
    model = ModelConfig.for_model(owner, title)
    entry = image_entry(model)
    stop_inputs_server(owner, title)
    name = container_name(model)
    limit = f"{model.memory_limit_mib}m"
    ensure_image(entry.image or "")  # with the registry's login: the SDK would pull without it
    docker_client().containers.run(
        entry.image,
        [f"{PLATFORM_VENV}/bin/python", "-m", "prefect_cs.services.inputs_server"],
        name=name,
        detach=True,
        network_mode="host",  # the API and the web app are on the host's loopback here
        environment=server_environment(model),
        volumes=task_storage_volume(),
        mem_limit=limit,
        memswap_limit=limit,
        nano_cpus=int(model.cpu * 1_000_000_000),
        restart_policy={"Name": "unless-stopped"},
        labels={LABEL: model.slug, "cs.compute.studio/tag": entry.tag},
    )
    return name


def stop_inputs_server(owner: str, title: str) -> bool:
    """Remove the model's inputs server; False when there was none."""
    import docker

    model = ModelConfig.for_model(owner, title)
    try:
        container = docker_client().containers.get(container_name(model))
    except docker.errors.NotFound:
        return False
    container.remove(force=True)
    return True


def inputs_server_status(owner: str, title: str) -> dict[str, Any] | None:
    import docker

    model = ModelConfig.for_model(owner, title)
    try:
        container = docker_client().containers.get(container_name(model))
    except docker.errors.NotFound:
        return None
    return {
        "name": container.name,
        "status": container.status,
        "tag": container.labels.get("cs.compute.studio/tag"),
    }


def refresh_if_running(model: ModelConfig) -> bool:
    """After a promote or rollback: a running inputs server moves to the new image."""
    if inputs_server_status(model.owner, model.title) is None:
        return False
    start_inputs_server(model.owner, model.title)
    return True
