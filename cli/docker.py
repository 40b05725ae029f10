"""`prefect-cs docker …`: the Docker tier's engine, registry, base image and worker on one machine."""

from __future__ import annotations

import typer
from prefect_cs.core.settings import get_settings
from prefect_cs.services.stack import Background, pool_worker

docker_app = typer.Typer(
    help="The Docker tier: engine and registry, base image, worker.", no_args_is_help=True
)


def docker_worker(pool: str | None = None) -> Background:
    """`prefect worker start --type docker` with the minimal worker environment.

    Workers copy their PREFECT_* settings into every container they start, so
    the worker gets only the API URL, CS_* settings and fast polling.
    """
    return pool_worker(pool or get_settings().docker_pool, "docker")


def run_script(name: str, *args: str) -> None:
    from prefect_cs.deployments.docker_scripts import run_script as run

    code = run(name, *args)
    if code != 0:
        raise typer.Exit(code)


@docker_app.command("up")
def up() -> None:
    """Start dockerd and a registry on 127.0.0.1:5000 if they are not running."""
    run_script("start-engine.sh")


@docker_app.command("base-image")
def base_image(image: str = typer.Argument("cs-base:bookworm")) -> None:
    """Build a base image from Debian with debootstrap (for machines that cannot pull)."""
    run_script("build-base-image.sh", image)


@docker_app.command("worker")
def worker(action: str = typer.Argument("start", help="start | stop | status")) -> None:
    """Start, stop or show the Docker pool's worker (log under $CS_HOME/stack/)."""
    from prefect_cs.work_pools.pools import ensure_pool

    bg = docker_worker()
    if action == "start":
        ensure_pool(get_settings().docker_pool, "docker")
        typer.echo(f"{bg.name}: pid {bg.start()}, log {bg.log_file}")
    elif action == "stop":
        typer.echo(f"{bg.name}: {'stopped' if bg.stop() else 'not running'}")
    elif action == "status":
        typer.echo(f"{bg.name}: {'running, pid ' + str(bg.pid()) if bg.pid() else 'stopped'}")
    else:
        typer.echo("action must be start, stop or status", err=True)
        raise typer.Exit(2)


@docker_app.command("inputs-server")
def inputs_server(
    action: str = typer.Argument(..., help="start | stop | status"),
    name: str = typer.Argument(..., help="OWNER/TITLE"),
) -> None:
    """A model's inputs server: a container of its promoted image answering version/defaults/parse."""
    from prefect_cs.services import docker_inputs
    from prefect_cs.tiers.steps import StepFailed

    owner, _, title = name.partition("/")
    try:
        if action == "start":
            typer.echo(f"started {docker_inputs.start_inputs_server(owner, title)}")
        elif action == "stop":
            gone = docker_inputs.stop_inputs_server(owner, title)
            typer.echo("stopped" if gone else "not running")
        elif action == "status":
            typer.echo(docker_inputs.inputs_server_status(owner, title) or "not running")
        else:
            typer.echo("action must be start, stop or status", err=True)
            raise typer.Exit(2)
    except (LookupError, ValueError, StepFailed) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
