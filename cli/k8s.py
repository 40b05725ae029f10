"""`prefect-cs k8s …`: manifests for the operator, a flow run's Job, the crash watcher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from uuid import UUID

import typer
import yaml

k8s_app = typer.Typer(
    help="Kubernetes: render manifests to apply, show a run's Job, report lost runs.",
    no_args_is_help=True,
)


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: manifests stay readable and diffable."""

    def ignore_aliases(self, data) -> bool:
        return True


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _models(names: list[str]):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import all_models

    if not names:
        import httpx
        from prefect.exceptions import PrefectHTTPStatusError

        try:
            return all_models()
        except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
            _fail(
                f"cannot read the model registry ({type(exc).__name__}): set PREFECT_API_URL to"
                " the platform's server and register the blocks (`prefect block register -m"
                " prefect_cs.blocks`)"
            )
    models = []
    for name in names:
        owner, _, title = name.partition("/")
        try:
            models.append(ModelConfig.for_model(owner, title))
        except (LookupError, ValueError) as exc:
            _fail(str(exc))
    return models


def _file_name(index: int, manifest: dict) -> str:
    meta = manifest["metadata"]
    return f"{index:02d}-{manifest['kind'].lower()}-{meta.get('namespace', 'cluster')}-{meta['name']}.yaml"


@k8s_app.command("render")
def render_cmd(
    model: list[str] = typer.Option(
        [], "--model", "-m", help="OWNER/TITLE (repeat); default: every registered model"
    ),
    namespace: str = typer.Option(None, help="Jobs namespace (default: the template's)"),
    worker_namespace: str = typer.Option("prefect", help="Where the Prefect worker runs"),
    api_url: str = typer.Option(None, help="PREFECT_API_URL as seen from the cluster"),
    out: Path = typer.Option(None, help="Write one file per manifest here instead of stdout"),
    no_secrets: bool = typer.Option(False, help="Leave out the model Secrets (no values read)"),
    platform_image: str = typer.Option(
        None, help="The platform's image: adds the `prefect-cs k8s watch` Deployment"
    ),
) -> None:
    """Namespaces, worker RBAC, model Secrets and inputs servers: `… | kubectl apply -f -`.

    Model Secrets carry values (base64): this output is for kubectl only; never log it.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect_cs.deployments.kubernetes import operator_manifests

    url = api_url or PREFECT_API_URL.value()
    if not url:
        _fail("no API URL: pass --api-url http://prefect-server.prefect:4200/api")
    manifests = operator_manifests(
        _models(model),
        url,
        namespace,
        worker_namespace,
        with_secrets=not no_secrets,
        platform_image=platform_image,
    )
    if out is None:
        typer.echo(yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for index, manifest in enumerate(manifests):
        path = out / _file_name(index, manifest)
        path.write_text(yaml.dump(manifest, Dumper=_PlainDumper, sort_keys=False))
        if manifest["kind"] == "Secret":
            path.chmod(0o600)
    typer.echo(f"{len(manifests)} manifests written to {out}", err=True)


@k8s_app.command("job")
def job_cmd(
    flow_run_id: UUID = typer.Argument(..., help="A simulate flow run on the kubernetes pool"),
    worker_name: str = typer.Option("prefect-cs-render", help="Recorded in the Job's labels"),
) -> None:
    """The Job the Kubernetes worker would create for a flow run, as JSON (no cluster needed).

    Run it with the worker's environment: the worker copies its PREFECT_* settings into Jobs.
    """
    from prefect_cs.deployments.kubernetes import render_job

    try:
        manifest = asyncio.run(render_job(flow_run_id, worker_name))
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(manifest, indent=2))


@k8s_app.command("watch")
def watch_cmd(
    pending_timeout: float = typer.Option(600.0, help="Seconds a run may stay Pending"),
    interval: float = typer.Option(30.0, help="Seconds between scans"),
    once: bool = typer.Option(False, help="One scan, print what was reported, exit"),
) -> None:
    """Send a FAIL to the web app for simulate runs lost before their flow could report.

    Crashed, or never started (Pending/Late): on Kubernetes, and the same on the
    process and Docker tiers (a killed flow process, a container that never ran).
    """
    from prefect_cs.services.lost_runs import scan_once, watch

    if once:
        typer.echo(json.dumps(scan_once(pending_timeout), indent=2))
        return
    watch(pending_timeout, interval)
