"""An interactive app's lifecycle as Prefect flow runs: `app-start` and `app-stop`.

Why flows: operators see every start and stop of a Dash, Bokeh or Streamlit deployment
in the Prefect UI with its logs (who asked, how long the server took to answer, why it
stopped), like publishes and simulations. The servers themselves belong to the front door
process (services/app_proxy.py), which must outlive any flow run: a flow asks it over its
control socket (`$CS_HOME/apps/control.sock`, in a folder only the platform's user opens)
and reports what it answered. The API, the CLI, the front door's restart page and its idle
reaper all go through these two flows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect_cs.core.errors import CSError
from prefect_cs.core.names import check_name
from prefect_cs.core.settings import get_settings


class AppRefused(CSError, RuntimeError):
    """The front door refused or could not do it; `status` is the HTTP status to pass on."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def control_socket() -> Path:
    return get_settings().home / "apps" / "control.sock"


def ask(method: str, path: str, body: dict | None = None, timeout: float = 30) -> Any:
    """One call to the front door's control socket; AppRefused names what went wrong."""
    sock = control_socket()
    if not sock.exists():
        raise AppRefused(
            503,
            f"the interactive apps' front door is not running ({sock} is missing): start it with"
            " `prefect-cs stack start` or `python -m prefect_cs.services.app_proxy`",
        )
    transport = httpx.HTTPTransport(uds=str(sock))
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            answer = client.request(method, f"http://control{path}", json=body)
    except httpx.HTTPError as exc:
        raise AppRefused(503, f"the front door did not answer: {exc}") from None
    if answer.status_code >= 400:
        raise AppRefused(answer.status_code, answer.json().get("detail", answer.text))
    return answer.json()


def key(owner: str, title: str, deployment_name: str) -> dict[str, str]:
    return {
        "owner": check_name("owner", owner),
        "title": check_name("title", title),
        "deployment_name": check_name("deployment name", deployment_name),
    }


@flow(name="app-start", log_prints=False)
def app_start(
    owner: str, title: str, deployment_name: str, tag: str | None = None, why: str = "asked"
) -> dict:
    """Start one deployment's server and wait until it answers HTTP (its ready stats)."""
    logger = get_run_logger()
    body = {**key(owner, title, deployment_name), "tag": tag}
    logger.info("starting %s/%s/%s (%s)", owner, title, deployment_name, why)
    started = ask("POST", "/start", body, timeout=get_settings().apps.start_seconds + 30)
    logger.info(
        "%s/%s/%s@%s answers HTTP, %.2f s after the request (server pid %s)",
        owner, title, deployment_name, started["tag"], started["seconds"], started["pid"],
    )  # fmt: skip
    return started


@flow(name="app-stop")
def app_stop(owner: str, title: str, deployment_name: str, why: str = "asked") -> dict:
    """Stop one deployment's server and free what it held (C/S's DeploymentDelete)."""
    logger = get_run_logger()
    stopped = ask("POST", "/stop", {**key(owner, title, deployment_name), "why": why})
    logger.info("stopped %s/%s/%s (%s): %s", owner, title, deployment_name, why, stopped)
    return stopped


def app_list() -> list[dict]:
    """Every deployment the front door knows: running ones and ones it stopped."""
    return ask("GET", "/list")


def app_stats(owner: str, title: str, deployment_name: str, ping: bool = False) -> dict:
    """C/S's DeploymentReadyStats of one deployment; `ping` counts as use (C/S's ping)."""
    path = "/stats/{owner}/{title}/{deployment_name}/".format(**key(owner, title, deployment_name))
    return ask("GET", path + ("?ping=1" if ping else ""))
