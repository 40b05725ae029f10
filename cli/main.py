"""The operator CLI, `prefect-cs`, built with typer and rich like Prefect's own."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import typer
from prefect_cs.cli.docker import docker_app
from prefect_cs.cli.k8s import k8s_app, watch_cmd
from prefect_cs.cli.redis import redis_app
from prefect_cs.cli.secrets import secrets_app
from prefect_cs.cli.webhook import webhook_app
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="prefect-cs",
    help="Publish Compute Studio model apps and run their simulations on Prefect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(help="Register, list, publish and roll back models.", no_args_is_help=True)
results_app = typer.Typer(help="Results the web app did not accept.", no_args_is_help=True)
stack_app = typer.Typer(
    help="The local stack: Prefect server, process worker, inputs worker.", no_args_is_help=True
)
webapp_app = typer.Typer(help="The web app that receives results.", no_args_is_help=True)
inputs_app = typer.Typer(
    help="The web app's light calls: version, defaults, parse.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(results_app, name="results")
app.add_typer(stack_app, name="stack")
app.add_typer(webapp_app, name="webapp")
app.add_typer(inputs_app, name="inputs")
app.add_typer(secrets_app, name="secrets")
models_app.add_typer(secrets_app, name="secrets")
app.add_typer(redis_app, name="redis")
app.add_typer(webhook_app, name="webhook")
app.add_typer(k8s_app, name="k8s")
app.command("watch")(watch_cmd)  # tier-agnostic: lost simulate runs become a FAIL on every tier
app.add_typer(docker_app, name="docker")

console = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    """One clear line and exit code 1: operators need the fix, not a traceback."""
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def split_model(name: str) -> tuple[str, str]:
    from prefect_cs.blocks.model_config import check_name

    owner, _, title = name.partition("/")
    try:
        return check_name("owner", owner), check_name("title", title)
    except ValueError as exc:
        fail(f"{exc} (models are named OWNER/TITLE)")
    raise AssertionError("unreachable")


def read_json(value: str | None) -> dict[str, Any]:
    """A JSON object given inline or as a path to a file."""
    if not value:
        return {}
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"not valid JSON ({exc}): give an object inline or the path of a .json file")
    if not isinstance(data, dict):
        fail("expected a JSON object")
    return data


# ---- models ---------------------------------------------------------------


@models_app.callback()
def models_main(
    ctx: typer.Context,
    name: str = typer.Option(
        None, "-n", "--name", help="OWNER/TITLE, for `models -n OWNER/TITLE secrets …`"
    ),
) -> None:
    ctx.obj = {"model": name} if name else {}


@models_app.command("register")
def models_register(
    path: Path = typer.Argument(..., help="A model config YAML, e.g. config/OWNER/TITLE.yaml"),
    repo_url: str = typer.Option(None, help="Override repo_url (a git URL or local path)."),
    repo_tag: str = typer.Option(None, help="Override repo_tag."),
) -> None:
    """Register (or update) a model from its YAML config; its published tags are kept."""
    from prefect_cs.registry.configs import ConfigError, read_config, register

    try:
        model = register(read_config(path, {"repo_url": repo_url, "repo_tag": repo_tag}))
    except (ConfigError, LookupError) as exc:
        fail(str(exc))
    console.print(
        f"registered [bold]{model.owner}/{model.title}[/bold] ({model.repo_url}@{model.repo_tag})"
    )


@models_app.command("list")
def models_list() -> None:
    """Every registered model with its promoted and published tags."""
    from prefect_cs.registry.configs import all_models

    table = Table(
        "model", "repo", "promoted", "staged", "published tags", "cpu", "memory", "time limit"
    )
    for m in sorted(all_models(), key=lambda m: m.slug):
        tags = ", ".join(f"{e.tag}({e.tier})" for e in m.published_tags) or "-"
        table.add_row(
            f"{m.owner}/{m.title}",
            f"{m.repo_url}@{m.repo_tag}",
            m.latest_tag or "-",
            m.staging_tag or "-",
            tags,
            str(m.cpu),
            m.memory,
            f"{m.time_limit}s",
        )
    console.print(table)


@models_app.command("show")
def models_show(name: str) -> None:
    """A model's full record as JSON."""
    from prefect_cs.blocks.model_config import ModelConfig

    try:
        model = ModelConfig.for_model(*split_model(name))
    except LookupError as exc:
        fail(str(exc))
    console.print_json(model.model_dump_json())


@models_app.command("publish")
def models_publish(
    name: str,
    tag: str = typer.Option(None, help="Git tag to publish (default: the config's repo_tag)."),
    steps: str = typer.Option("all", help="all | stage | promote"),
) -> None:
    """Publish a model: clone, build, test, push, stage, promote, deploy (a flow run you can watch in the UI)."""
    from prefect_cs.flows.publish import publish

    owner, title = split_model(name)
    if steps not in ("all", "stage", "promote"):
        fail("--steps must be all, stage or promote")
    state = publish(owner, title, tag, steps, return_state=True)
    if state.is_failed():
        fail(f"publish of {name} failed: {state.message}")
    console.print(f"[green]published[/green] {name}: {state.result()}")


@models_app.command("rollback")
def models_rollback(name: str, tag: str) -> None:
    """Promote an earlier published tag again; the model's deployment moves back to it."""
    from prefect_cs.flows.publish import publish

    owner, title = split_model(name)
    state = publish(owner, title, tag, "promote", return_state=True)
    if state.is_failed():
        fail(f"rollback of {name} to {tag} failed: {state.message}")
    console.print(f"[green]rolled back[/green] {name} to {tag}")


# ---- simulations ----------------------------------------------------------


@app.command("simulate")
def simulate_cmd(
    name: str,
    adjustment: str = typer.Option(None, "--adjustment", "-a", help="JSON object or .json file"),
    meta: str = typer.Option(
        None, "--meta", "-m", help="meta_param_dict: JSON object or .json file"
    ),
    tag: str = typer.Option(None, help="Tag to run (default: the promoted one)."),
    wait: float = typer.Option(600, help="Seconds to wait for the run; 0 to return at once."),
) -> None:
    """Run a simulation through the model's deployment (as the web app does) and wait for it."""
    from prefect_cs.deployments.submit import submit_simulation

    owner, title = split_model(name)
    task_id = str(uuid.uuid4())
    try:
        run = submit_simulation(
            owner, title, read_json(meta), read_json(adjustment), tag, task_id, wait
        )
    except LookupError as exc:
        fail(str(exc))
    console.print(f"flow run [bold]{run.name}[/bold] ({run.id}) task {task_id}: {run.state_name}")
    if run.state and run.state.is_final():
        console.print(f"  {run.state.message}")
        show_outputs(task_id)
        if not run.state.is_completed():
            raise typer.Exit(1)


def show_outputs(task_id: str) -> None:
    from prefect_cs.core.settings import get_settings

    storage = get_settings().outputs_block
    console.print(
        f"  outputs: {task_id}_renderable.zip, {task_id}_downloadable.zip in block {storage}"
    )
    try:
        from prefect_cs.flows.storage import load_outputs_storage

        basepath = getattr(load_outputs_storage(), "basepath", None) or getattr(
            load_outputs_storage(), "bucket", None
        )
        if basepath:
            console.print(f"  at: {basepath}/{task_id}_renderable.zip")
    except LookupError:
        pass


# ---- results --------------------------------------------------------------


@results_app.command("list")
def results_list() -> None:
    """Results kept because the web app did not accept them."""
    from prefect_cs.flows.notify import undelivered

    table = Table("file", "path", "task", "error")
    for kept in undelivered():
        record = json.loads(kept.read_text())
        table.add_row(
            kept.name, record["path"], str(record["payload"].get("task_id")), record["error"][:80]
        )
    console.print(table)


@results_app.command("resend")
def results_resend() -> None:
    """Deliver every kept result again; those that get through are removed."""
    from prefect_cs.flows.notify import resend_undelivered

    report = resend_undelivered()
    for kept, outcome in report:
        console.print(f"{kept.name}: {outcome}")
    console.print(f"{sum(o == 'delivered' for _, o in report)} of {len(report)} delivered")
    if any(o != "delivered" for _, o in report):
        raise typer.Exit(1)


# ---- web app --------------------------------------------------------------


@webapp_app.command("set")
def webapp_set(
    url: str = typer.Option(..., help="The web app's base URL."),
    token_stdin: bool = typer.Option(False, "--token-stdin", help="Read the token from stdin."),
    token: str = typer.Option(
        None, envvar="CS_WEBAPP_TOKEN", help="Or take it from CS_WEBAPP_TOKEN."
    ),
) -> None:
    """Save the web app block (the token never needs to be on the command line)."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.core.settings import get_settings

    value = sys.stdin.readline().rstrip("\n") if token_stdin else token
    if not value:
        fail("no token: pipe it with --token-stdin or set CS_WEBAPP_TOKEN")
    WebApp(base_url=url, token=value).save(
        get_settings().webapp_block.split("/", 1)[1], overwrite=True
    )
    console.print(f"web app set to {url}")


# ---- inputs ---------------------------------------------------------------


@inputs_app.command("version")
def inputs_version(name: str, tag: str = typer.Option(None)) -> None:
    from prefect_cs.flows.inputs import get_version

    console.print_json(data=get_version(*split_model(name), tag=tag))


@inputs_app.command("defaults")
def inputs_defaults(
    name: str, meta: str = typer.Option(None, "--meta", "-m"), tag: str = typer.Option(None)
) -> None:
    from prefect_cs.flows.inputs import get_defaults

    console.print_json(data=get_defaults(*split_model(name), read_json(meta), tag=tag))


@inputs_app.command("parse")
def inputs_parse(
    name: str,
    adjustment: str = typer.Option(..., "--adjustment", "-a"),
    meta: str = typer.Option(None, "--meta", "-m"),
    tag: str = typer.Option(None),
) -> None:
    from prefect_cs.flows.inputs import parse

    task_id = str(uuid.uuid4())
    console.print_json(
        data=parse(*split_model(name), task_id, read_json(meta), read_json(adjustment), tag=tag)
    )


@inputs_app.command("serve")
def inputs_serve(
    model: str = typer.Option(
        None,
        "--model",
        envvar="CS_INPUTS_MODEL",
        help="OWNER/TITLE: serve only this model (its inputs server on a container tier).",
    ),
) -> None:
    """Serve the inputs background tasks (a long-running task worker): every model's, or one's."""
    from prefect_cs.services.inputs_server import serve

    if model:
        split_model(model)
    serve(model)


# ---- stack ----------------------------------------------------------------


@stack_app.command("start")
def stack_start() -> None:
    """Start the Prefect server, register blocks and pools, start the workers.

    Without a saved web app block (`prefect-cs webapp set`), a local recording stand-in is started.
    """
    from prefect_cs.services.stack import start_stack

    for line in start_stack():
        console.print(line)


@stack_app.command("stop")
def stack_stop() -> None:
    """Stop what `stack start` started."""
    from prefect_cs.services.stack import stop_stack

    for line in stop_stack():
        console.print(line)


@stack_app.command("status")
def stack_status() -> None:
    from prefect_cs.services.stack import stack_status as status

    for line in status():
        console.print(line)


@app.command("pool")
def pool_cmd(kind: str = typer.Argument(..., help="process | docker | kubernetes")) -> None:
    """Create or update a work pool from its base job template in work_pools/."""
    from prefect_cs.deployments.deploy import pool_for
    from prefect_cs.work_pools.pools import ensure_pool

    tier = {"process": "local"}.get(kind, kind)
    try:
        name, pool_type = pool_for(tier)
    except KeyError:
        fail("pool kind must be process, docker or kubernetes")
    ensure_pool(name, pool_type)
    console.print(f"work pool {name} ({pool_type}) is up to date")


if __name__ == "__main__":
    app()
