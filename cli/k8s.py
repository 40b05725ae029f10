"""`prefect-cs k8s …`: what an operator applies to a cluster, and the Job a run would get.

Rendered here rather than shipped as static YAML because the manifests depend on
the registered models (their Secrets and inputs servers) and the platform's settings.
The lost-run watcher is `prefect-cs watch` (cli/watch.py): it serves every tier.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import typer
import yaml
from prefect_cs.cli._utilities import CSTyper, exit_with_error, split_model

if TYPE_CHECKING:
    from prefect_cs.blocks.model_config import ModelConfig

k8s_app = CSTyper(help="Kubernetes: render manifests to apply, show a run's Job.")


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: manifests stay readable and diffable."""

    def ignore_aliases(self, data) -> bool:
        return True


def _models(names: list[str]) -> list[ModelConfig]:
    """The named models, or every registered one (which needs the platform's API)."""
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import all_models

    if not names:
        import httpx
        from prefect.exceptions import PrefectHTTPStatusError

        try:
            return all_models()
        except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
            exit_with_error(
                f"cannot read the model registry ({type(exc).__name__}): set PREFECT_API_URL to"
                " the platform's server and register the blocks (`prefect block register -m"
                " prefect_cs.blocks`)"
            )
    return [ModelConfig.for_model(*split_model(name)) for name in names]


def _file_name(index: int, manifest: dict) -> str:
    meta = manifest["metadata"]
    return (
        f"{index:02d}-{manifest['kind'].lower()}-{meta.get('namespace', 'cluster')}"
        f"-{meta['name']}.yaml"
    )


def _webapp_url() -> str | None:
    """The web app block's URL, for the simulation pods' NetworkPolicy; None without a block."""
    from prefect_cs.flows.notify import load_webapp

    try:
        return load_webapp().base_url
    except Exception:  # noqa: BLE001 - no web app block yet: the policy leaves it out
        return None


def _front_door(
    platform_image: str | None, api_url: str, public_url: str, namespace: str | None
) -> list[dict]:
    """The apps' front door and their NetworkPolicies, in the jobs namespace with the apps."""
    from prefect_cs.infra.kubernetes import jobs_namespace
    from prefect_cs.infra.kubernetes_front_door import front_door_manifests
    from prefect_cs.tiers.platform_image import configured_platform_image

    image = platform_image or configured_platform_image()
    return front_door_manifests(image, api_url, public_url, namespace or jobs_namespace())


@k8s_app.command("render")
def render_cmd(
    model: list[str] = typer.Option(
        [], "--model", "-m", help="OWNER/TITLE (repeat); default: every registered model"
    ),
    namespace: str = typer.Option(None, help="Jobs namespace (default: the template's)"),
    worker_namespace: str = typer.Option("prefect", help="Where the Prefect worker runs"),
    api_url: str = typer.Option(None, help="PREFECT_API_URL as seen from the cluster"),
    out: Path = typer.Option(None, help="Write one file per manifest here instead of stdout"),
    no_secrets: bool = typer.Option(
        False, help="Leave out the model and registry Secrets (no values read)"
    ),
    platform_image: str = typer.Option(
        None, help="The platform's image: adds the `prefect-cs watch` Deployment"
    ),
    apps_public_url: str = typer.Option(
        None,
        help="The host app Ingresses serve (https://apps.example.org): adds the interactive"
        " apps' front door (Deployment, Service cs-app-front-door, NetworkPolicies); its"
        " Secrets prefect-auth and cs-app-link-key are the operator's to create",
    ),
) -> None:
    """Namespaces, worker RBAC, model Secrets, inputs servers, the apps' front door:
    `… | kubectl apply -f -`.

    Model and registry Secrets carry values (base64): this output is for kubectl only; never log it.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect_cs.infra.kubernetes import operator_manifests

    url = api_url or PREFECT_API_URL.value()
    if not url:
        exit_with_error("no API URL: pass --api-url http://prefect-server.prefect:4200/api")
    manifests = operator_manifests(
        _models(model),
        url,
        namespace,
        worker_namespace,
        with_secrets=not no_secrets,
        platform_image=platform_image,
        webapp_url=_webapp_url(),
    )
    if apps_public_url:
        manifests += _front_door(platform_image, url, apps_public_url, namespace)
    if out is None:
        typer.echo(yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for index, manifest in enumerate(manifests):
        path = out / _file_name(index, manifest)
        path.write_text(yaml.dump(manifest, Dumper=_PlainDumper, sort_keys=False))
        if manifest["kind"] == "Secret":
            path.chmod(0o600)
    typer.echo(f"{len(manifests)} manifests written to {out}", err=True)  # stdout stays YAML-only


@k8s_app.command("job")
def job_cmd(
    flow_run_id: UUID = typer.Argument(..., help="A simulate flow run on the kubernetes pool"),
    worker_name: str = typer.Option("prefect-cs-render", help="Recorded in the Job's labels"),
) -> None:
    """The Job the Kubernetes worker would create for a flow run, as JSON (no cluster needed).

    Run it with the worker's environment: the worker copies its PREFECT_* settings into Jobs.
    """
    from prefect_cs.infra.kubernetes import render_job

    manifest = asyncio.run(render_job(flow_run_id, worker_name))
    typer.echo(json.dumps(manifest, indent=2))


@k8s_app.command("platform-image")
def platform_image_cmd() -> None:
    """Build and push the platform's own image (each Job's flow runs in it); print its digest.

    Set CS_PLATFORM_IMAGE to what it prints wherever publish runs: the kubernetes tier's
    deployments name it. The Docker build cache makes a repeat with an unchanged platform quick.
    """
    import logging

    from prefect_cs.core.errors import StepFailed
    from prefect_cs.tiers.platform_image import build_platform_image

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        image = build_platform_image(logging.getLogger("prefect_cs.platform_image"))
    except StepFailed as exc:
        exit_with_error(str(exc))
    typer.echo(image)
