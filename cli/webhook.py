"""`prefect-cs webhook …`: serve the GitHub webhook receiver, show its trigger and Cloud template.

Self-hosted Prefect has no webhook endpoint, so the receiver is ours to run;
on Prefect Cloud its webhook does the same from the printed template.
"""

from __future__ import annotations

import typer
import yaml
from prefect_cs.cli._utilities import CSTyper

webhook_app = CSTyper(
    help="The GitHub webhook receiver that turns pushes, releases and PRs into publish runs.",
)


@webhook_app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8780, help="Port to listen on."),
) -> None:
    """Serve POST /github (and GET /health) with uvicorn until interrupted."""
    from prefect_cs.services.webhook.app import serve

    serve(host, port)  # a missing webhook secret is NotConfigured: one line, exit 1


@webhook_app.command("triggers")
def triggers_cmd() -> None:
    """The publish deployment's triggers, as YAML for prefect.yaml."""
    from prefect_cs.deployments.triggers import PUBLISH_TRIGGERS

    typer.echo(yaml.safe_dump({"triggers": PUBLISH_TRIGGERS}, sort_keys=False, width=200))


@webhook_app.command("cloud-template")
def cloud_template_cmd(
    owner: str = typer.Argument(..., help="The model's owner."),
    title: str = typer.Argument(..., help="The model's title."),
) -> None:
    """A Prefect Cloud webhook template emitting the same event for one model's tag pushes."""
    from prefect_cs.core.names import check_name
    from prefect_cs.deployments.triggers import cloud_webhook_template

    check_name("owner", owner)
    check_name("title", title)
    typer.echo(cloud_webhook_template(owner, title))
