"""The `prefect-cs` app: assembles the command groups, one module each, like Prefect's own CLI.

Commands live in their group's module (cli/models.py, cli/k8s.py, …); what they
share (the console, `exit_with_error`, the mapping of the platform's errors to
a clean exit) is in cli/_utilities.py. This module only decides the tree.
"""

from __future__ import annotations

import sys

from prefect_cs.core.errors import CSError
from prefect_cs.services.stack_login import load_local_api_auth

try:
    load_local_api_auth()  # before anything imports Prefect, which reads its settings once
except CSError as exc:  # e.g. a login file others can read: one line naming the fix
    sys.exit(f"error: {exc}")

from prefect_cs.cli._utilities import CSTyper  # noqa: E402
from prefect_cs.cli.api import api_app, sync_cmd  # noqa: E402
from prefect_cs.cli.deployments import deployments_app  # noqa: E402
from prefect_cs.cli.docker import docker_app  # noqa: E402
from prefect_cs.cli.inputs import inputs_app  # noqa: E402
from prefect_cs.cli.k8s import k8s_app  # noqa: E402
from prefect_cs.cli.models import models_app  # noqa: E402
from prefect_cs.cli.pool import pool_cmd  # noqa: E402
from prefect_cs.cli.redis import redis_app  # noqa: E402
from prefect_cs.cli.results import results_app  # noqa: E402
from prefect_cs.cli.secrets import secrets_app  # noqa: E402
from prefect_cs.cli.simulate import simulate_cmd  # noqa: E402
from prefect_cs.cli.stack import stack_app  # noqa: E402
from prefect_cs.cli.watch import watch_cmd  # noqa: E402
from prefect_cs.cli.webapp import webapp_app  # noqa: E402
from prefect_cs.cli.webhook import webhook_app  # noqa: E402

app = CSTyper(
    name="prefect-cs",
    help="Publish Compute Studio model apps and run their simulations on Prefect.",
)

app.command("watch")(watch_cmd)  # tier-agnostic: lost simulate runs become a FAIL on every tier
app.command("simulate")(simulate_cmd)
app.command("pool")(pool_cmd)

app.add_typer(models_app, name="models")
app.add_typer(results_app, name="results")
app.add_typer(stack_app, name="stack")
app.add_typer(webapp_app, name="webapp")
app.add_typer(inputs_app, name="inputs")
app.add_typer(secrets_app, name="secrets")  # the cluster's secrets …
models_app.add_typer(secrets_app, name="secrets")  # … and one model's: `models -n OWNER/TITLE`
app.add_typer(redis_app, name="redis")
app.add_typer(webhook_app, name="webhook")
app.add_typer(api_app, name="api")
models_app.command("sync")(sync_cmd)  # the web app's projects list → the registry (cli/api.py)
app.add_typer(k8s_app, name="k8s")
app.add_typer(docker_app, name="docker")
app.add_typer(deployments_app, name="deployments")

if __name__ == "__main__":
    app()
