"""`prefect-cs docker …`: the Docker tier's engine, registry, base image and worker on one machine.

The Docker tier needs a daemon and a registry before its first publish; these
commands stand them up without a cluster. The registry asks for a login on every
push and pull: `up` makes it once (root-only file) and saves it in the
DockerRegistryCredentials block the platform uses by name. The worker itself is
services.stack_parts.docker_worker, shared with the tests and benchmarks.
"""

from __future__ import annotations

import typer
from prefect_cs.cli._utilities import CSTyper, exit_with_error
from prefect_cs.core.settings import get_settings
from prefect_cs.services.stack_parts import docker_worker

docker_app = CSTyper(help="The Docker tier: engine and registry, base image, worker.")

ACTIONS = ("start", "stop", "status")


def run_script(name: str, *args: str) -> None:
    """Run a packaged shell script; its own output explains a failure, its code is ours."""
    from prefect_cs.infra.docker_scripts import run_script as run

    code = run(name, *args)
    if code != 0:
        raise typer.Exit(code)


def check_action(action: str) -> None:
    if action not in ACTIONS:
        exit_with_error("action must be start, stop or status", code=2)


@docker_app.command("up")
def up(
    block: bool = typer.Option(
        True, help="Save the registry's login as the cs-registry block (needs the Prefect API)"
    ),
) -> None:
    """Start dockerd and a registry with auth on 127.0.0.1:5000 if they are not running,
    then save the registry's login as the DockerRegistryCredentials block `cs-registry`."""
    import httpx

    run_script("start-engine.sh")
    if not block:
        return
    try:
        registry_block(None)
    except httpx.TransportError as exc:
        exit_with_error(
            f"the engine and registry are up, but the Prefect API did not answer ({exc}): start"
            " the stack (`prefect-cs stack start`), then `prefect-cs docker registry-block`"
        )


@docker_app.command("registry-block")
def registry_block(
    name: str = typer.Argument(None, help="The block's name (default cs-registry)"),
) -> None:
    """Save the local registry's login (root-only file start-engine.sh made) as a block that
    publish pushes with and Docker workers pull with, by reference. Run again after a rotation."""
    from prefect_cs.tiers.docker import (
        LOCAL_REGISTRY_BLOCK,
        LOCAL_REGISTRY_CREDENTIALS,
        save_registry_block,
    )

    name = name or LOCAL_REGISTRY_BLOCK
    host = save_registry_block(name)
    typer.echo(
        f"saved the login of {host} (from {LOCAL_REGISTRY_CREDENTIALS}) as the"
        f" DockerRegistryCredentials block {name!r}: export CS_REGISTRY_BLOCK={name}"
    )


@docker_app.command("base-image")
def base_image(image: str = typer.Argument("cs-base:bookworm")) -> None:
    """Build a base image from Debian with debootstrap (for machines that cannot pull)."""
    run_script("build-base-image.sh", image)


@docker_app.command("worker")
def worker(action: str = typer.Argument("start", help="start | stop | status")) -> None:
    """Start, stop or show the Docker pool's worker (log under $CS_HOME/stack/)."""
    from prefect_cs.work_pools.pools import ensure_pool

    check_action(action)
    bg = docker_worker()
    if action == "start":
        ensure_pool(get_settings().docker_pool, "process")
        typer.echo(f"{bg.name}: pid {bg.start()}, log {bg.log_file}")
    elif action == "stop":
        typer.echo(f"{bg.name}: {'stopped' if bg.stop() else 'not running'}")
    else:
        typer.echo(f"{bg.name}: {'running, pid ' + str(bg.pid()) if bg.pid() else 'stopped'}")
