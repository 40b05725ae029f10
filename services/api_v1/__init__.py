"""Compute Studio's later cluster protocol (v1), under `/api/v1`, beside C/S 1.6's routes.

Why: C/S's web app from its v1 clusters on logs in (`Cluster.ensure_access_token`),
sends `Authorization: Bearer <jwt>` and calls `/api/v1/...` (`Cluster.path_prefix`);
one cluster may serve several such web apps, each seeing only its own projects.
One router module per resource — login, users, projects, jobs, builds, secrets — all
declared through `V1.route` (context.py: one auth dependency, one error mapping,
errors.py). services/api.py mounts `mount(...)` in the same app,
so v0 and v1 share the model directory, answer caches and pending queues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_cs.core.home import private_folder
from prefect_cs.core.settings import ApiSettings
from prefect_cs.services.api_v1 import (
    builds,
    deployments,
    jobs,
    login,
    projects,
    secrets,
    users,
)
from prefect_cs.services.api_v1.auth import Tokens
from prefect_cs.services.api_v1.context import V1
from prefect_cs.services.api_v1.login_limits import LoginLimits
from prefect_cs.services.api_v1.store import Store
from starlette.routing import Mount

PREFIX = "/api/v1"
V1_PATHS = {  # for the API's /openapi.json; README "Connecting a web app" says what each answers
    f"{PREFIX}/login/access-token": {
        "post": {"summary": "OAuth2 password form → bearer token", "security": []}
    },
    f"{PREFIX}/projects/sync/": {"post": {"summary": "this web app's projects (C/S schema)"}},
    f"{PREFIX}/projects/": {"get": {"summary": "this web app's projects, 30 a page"}},
    f"{PREFIX}/jobs/{{owner}}/{{title}}/": {
        "post": {"summary": "version/defaults/parse/sim → 201"}
    },
    f"{PREFIX}/jobs/callback/{{job_id}}/": {
        "get": {"summary": "your job's record, until it finishes (C/S's callback)"},
        "post": {"summary": "C/S's TaskComplete: refused, results come from the job's flow"},
    },
    f"{PREFIX}/builds/{{owner}}/{{title}}/": {"post": {"summary": "publish the project's tag"}},
    f"{PREFIX}/builds/{{build_id}}/": {
        "get": {"summary": "a build's status, stage and logs"},
        "delete": {"summary": "cancel a build"},
    },
    f"{PREFIX}/users/": {"post": {"summary": "create a cluster user (superusers only)"}},
    f"{PREFIX}/users/me": {"get": {"summary": "the caller's user"}},
    f"{PREFIX}/users/ping/": {"get": {"summary": "the cluster gets a token from your web app"}},
    f"{PREFIX}/users/approve/": {"post": {"summary": "approve a user (superusers only)"}},
    f"{PREFIX}/projects/{{owner}}/{{title}}/secrets/": {"get": {"summary": "secret names"}},
    f"{PREFIX}/projects/{{owner}}/{{title}}/secrets/{{name}}/": {
        "put": {"summary": "set a secret (owner only)"},
        "delete": {"summary": "delete a secret (owner only)"},
    },
    **deployments.PATHS,
}


def store_at(home: Path) -> Store:
    """The v1 store in `$CS_HOME/api` (0700): the API and `prefect-cs api users` share it."""
    return Store(private_folder(home / "api", home) / "v1.sqlite3")


def mount(cluster: Any, settings: ApiSettings, home: Path, depth: int) -> Mount:
    """The v1 routes on `cluster` (services.api.ClusterApi), and at its start the watchers of
    unfinished builds; the signing key is read (or made) once, at the first login or token
    check, so rotating it means restarting the API."""
    tokens = Tokens(settings)
    limits = LoginLimits(settings)
    v1 = V1(store_at(home), tokens, cluster, settings.max_body_bytes, depth, limits)
    routes = [*login.routes(v1), *projects.routes(v1), *jobs.routes(v1), *builds.routes(v1)]
    routes += [*secrets.routes(v1), *users.routes(v1), *deployments.routes(v1)]
    cluster.on_start.append(lambda: builds.resume(v1))
    return Mount(PREFIX, routes=routes)
