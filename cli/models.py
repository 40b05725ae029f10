"""`prefect-cs models …`: the model registry an operator edits by hand.

Register and publish are the operator's side of what the webhook automates; `usage`
totals what a model's runs cost over a period;
`models -n OWNER/TITLE` scopes the `secrets` group (mounted in cli/main.py) to one model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from prefect_cs.cli._utilities import (
    CSTyper,
    console,
    exit_with_error,
    exit_with_success,
    split_model,
)
from rich.table import Table

models_app = CSTyper(help="Register, list, publish and roll back models.")


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
    repo_url: str = typer.Option(
        None,
        help="Override repo_url: https://, ssh://, git:// or user@host:path (a local path only"
        " under CS_LOCAL_REPO_PREFIXES).",
    ),
    repo_tag: str = typer.Option(None, help="Override repo_tag."),
) -> None:
    """Register (or update) a model from its YAML config; its published tags are kept."""
    from prefect_cs.registry.configs import read_config, register

    model = register(read_config(path, {"repo_url": repo_url, "repo_tag": repo_tag}))
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
    """A model's full record as JSON, then its simulations that have not finished, by state."""
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.deployments.queue import unfinished_runs

    model = ModelConfig.for_model(*split_model(name))
    console.print_json(model.model_dump_json())
    limit = model.max_concurrent_simulations or "the pool's"
    table = Table("state", "simulations", title=f"queue (at most {limit} at once)")
    for state, count in sorted(unfinished_runs(model).items()) or [("none waiting", 0)]:
        table.add_row(state, str(count))
    console.print(table)


@models_app.command("publish")
def models_publish(
    name: str,
    tag: str = typer.Option(None, help="Git tag to publish (default: the config's repo_tag)."),
    steps: str = typer.Option("all", help="all | stage | promote"),
    forward_only: bool = typer.Option(
        False,
        "--forward-only",
        help="Refuse to promote a tag older than the promoted one (as webhooks do).",
    ),
) -> None:
    """Publish a model: clone, build, test, push, stage, promote, deploy (a flow run you can watch
    in the UI)."""
    from prefect_cs.flows.publish import publish

    owner, title = split_model(name)
    if steps not in ("all", "stage", "promote"):
        exit_with_error("--steps must be all, stage or promote")
    state = publish(owner, title, tag, steps, forward_only=forward_only, return_state=True)
    if state.is_failed():
        exit_with_error(f"publish of {name} failed: {state.message}")
    exit_with_success(f"[green]published[/green] {name}: {state.result()}")


@models_app.command("rollback")
def models_rollback(name: str, tag: str) -> None:
    """Promote an earlier published tag again; the model's deployment moves back to it."""
    from prefect_cs.flows.publish import publish

    owner, title = split_model(name)
    state = publish(owner, title, tag, "promote", return_state=True)
    if state.is_failed():
        exit_with_error(f"rollback of {name} to {tag} failed: {state.message}")
    exit_with_success(f"[green]rolled back[/green] {name} to {tag}")


def _moment(text: str | None, option: str) -> datetime | None:
    """A date or date-time (ISO 8601; UTC when no zone is given)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        exit_with_error(f"{option} {text!r} is not a date: give YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@models_app.command("usage")
def models_usage(
    name: str,
    since: str = typer.Option(..., help="Start of the period: YYYY-MM-DD[THH:MM] (UTC)."),
    until: str = typer.Option(None, help="End of the period, excluded (default: now)."),
    as_json: bool = typer.Option(False, "--json", help="Print the totals as JSON."),
) -> None:
    """What a model's simulations cost over a period: runs, run time, CPU-seconds, peak memory.

    Totals the usage row every simulate run records (SUCCESS and FAIL) in the Prefect
    artifact `usage-OWNER-TITLE`; see flows/usage.py.
    """
    from prefect_cs.flows.usage import model_usage

    owner, title = split_model(name)
    start, end = _moment(since, "--since"), _moment(until, "--until")
    totals = model_usage(owner, title, start, end)  # type: ignore[arg-type]
    if as_json:
        console.print_json(json.dumps(totals))
        return
    table = Table("model", "runs", "failed", "run time (s)", "CPU (s)", "peak memory (MiB)")
    table.add_row(
        totals["model"],
        str(totals["runs"]),
        str(totals["failed"]),
        f"{totals['run_seconds']:.2f}",
        f"{totals['cpu_seconds']:.2f}",
        f"{totals['peak_memory_mib']:.1f}",
    )
    console.print(table)
