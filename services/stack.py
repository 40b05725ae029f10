"""The local stack: `prefect-cs stack start | stop | status`.

A Prefect server, process workers, the inputs task worker, the lost-run watcher,
the cluster API and, when no web app is set, the local web app; with
`CS_STACK_DATABASE=postgresql`, its own PostgreSQL and messaging Redis. Each is a
background process under the one supervisor (services/supervisor.py), defined in
services/stack_parts.py, so `stack start` and `stack stop` work across shells and
the tests start exactly what an operator starts. The login and secret files are
services/stack_login.py; the blocks made for a first try, services/stack_blocks.py.

Everything the stack keeps is under CS_HOME, whatever the shell's PREFECT_HOME: its
server's database is `$CS_HOME/prefect/prefect.db`, so a restart from any shell finds
the same registry. `stack start` refuses a CS_HOME others can open and makes what is
missing private (core/home.py); its own processes are born with umask 077.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect_cs.core.home import (
    model_reach_warning,
    prepare_home,
    private_umask,
    refuse_earlier_database,
    refuse_exposed,
)
from prefect_cs.core.settings import get_settings
from prefect_cs.services import messaging, postgres
from prefect_cs.services.stack_blocks import (
    ensure_api_token,
    ensure_storage_blocks,
    ensure_webapp,
    register_blocks,
)
from prefect_cs.services.stack_login import api_auth_string, api_url, auth_source, client_auth
from prefect_cs.services.stack_parts import (
    DATABASE_URL_ENVS,
    PrefectServer,
    answers_health,
    api_base_url,
    api_server,
    app_front_door,
    inputs_worker,
    local_webapp,
    lost_run_watcher,
    process_workers,
    stack_prefect_home,
    started_process_workers,
)
from prefect_cs.services.supervisor import Background, NotReady, has_pid_file


def choose(database: str | None, workers: int | None) -> None:
    """`stack start --database/--workers`: a flag wins over its CS_STACK_* variable. It sets the
    variable, so the settings tree (and its validation, which names the variable) sees one value."""
    choice = {"CS_STACK_DATABASE": database, "CS_STACK_WORKERS": workers}
    os.environ.update({k: str(v) for k, v in choice.items() if v is not None})


def start_stack() -> list[str]:
    """Refuse a CS_HOME others can open, make what is missing private, then start every part."""
    home = get_settings().home
    refuse_exposed(home)
    api_requires_token()  # CS_API_AUTH=none where it may not be: refused before anything starts
    if not scaled() and not any(name in os.environ for name in DATABASE_URL_ENVS):
        refuse_earlier_database(
            home, Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
        )
    with private_umask():
        prepare_home(home)
        with client_auth(api_auth_string()):
            return _start_stack()


def _start_stack() -> list[str]:
    from prefect_cs.deployments.deploy import deploy_publish
    from prefect_cs.work_pools.pools import ensure_pool

    lines = start_database()
    lines += [w for w in [model_reach_warning(get_settings().home)] if w]
    server = PrefectServer(
        api_url=api_url(), home=stack_prefect_home(), extra_env=database_environment()
    )
    server.start(timeout=180 if scaled() else 90)  # its first start migrates PostgreSQL
    lines += [
        f"Prefect server: {api_url()} (UI: {api_url().removesuffix('/api')}; it asks for a"
        f" password: paste {auth_source()})"
    ]
    register_blocks()
    lines += ensure_storage_blocks()
    lines.append(ensure_webapp())
    ensure_pool(get_settings().process_pool, "process")
    deploy_publish()
    lines.append("deployment publish/publish on pool " + get_settings().process_pool)
    for bg in (*process_workers(), inputs_worker(), lost_run_watcher(), app_front_door()):
        lines.append(f"{bg.name}: pid {bg.start()}, log {bg.log_file}")
    return lines + start_api()


def api_requires_token() -> bool:
    """The cluster API's auth mode (CS_API_AUTH), checked against the interface it listens on."""
    from prefect_cs.services.api import requires_token

    settings = get_settings().api
    return requires_token(settings, settings.host)


def start_api() -> list[str]:
    """The cluster API, waited for up to a minute; reported as not answering yet, not failed.
    Its auth mode is CS_API_AUTH (its process inherits the variable): token unless set to none."""
    if api_requires_token():
        lines = [ensure_api_token()]
    else:
        lines = [
            "cluster API auth: NONE (CS_API_AUTH=none): no token asked; loopback or a network"
            " only the web app shares (see its log)"
        ]
    bg, url = api_server(), api_base_url()
    try:
        pid, state = bg.start_and_wait(lambda: answers_health(url), timeout=60), "up"
    except NotReady as exc:
        pid, state = exc.pid, "NOT answering yet"
    return lines + [f"{bg.name}: pid {pid}, {url} ({state}), log {bg.log_file}"]


def scaled() -> bool:
    """CS_STACK_DATABASE=postgresql: the server on the stack's PostgreSQL, with Redis messaging."""
    return get_settings().stack.database == "postgresql"


def start_database() -> list[str]:
    """The scaled stack's PostgreSQL and messaging Redis, before the server."""
    if not scaled():
        return []
    return [postgres.start(), messaging.start()]


def database_environment() -> dict[str, str]:
    """What the server needs for the chosen database: nothing for SQLite (its default)."""
    if not scaled():
        return {}
    return {**postgres.server_environment(), **messaging.server_environment()}


def stop_stack() -> list[str]:
    """The server's clients all at once (each may take its SIGTERM grace: one after another
    that added up to half a minute), then the server, then its databases."""
    clients = [
        api_server(),
        app_front_door(),
        lost_run_watcher(),
        inputs_worker(),
        *started_process_workers(),
        local_webapp(),
    ]
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        stopped = list(pool.map(lambda bg: bg.stop(), clients))
    server = PrefectServer(api_url=api_url()).background()
    parts = [*zip(clients, stopped, strict=True), (server, server.stop())]
    lines = [f"{bg.name}: {'stopped' if done else 'not running'}" for bg, done in parts]
    return lines + stop_database()


def stop_database() -> list[str]:
    """After the server: the stack's messaging Redis and PostgreSQL, if they were started."""
    lines = []
    for name, stop in (("redis-messaging", messaging.stop), ("postgres", postgres.stop)):
        if has_pid_file(name):
            lines.append(f"{name}: {'stopped' if stop() else 'not running'}")
    return lines


def stack_status() -> list[str]:
    parts = [
        PrefectServer(api_url=api_url()).background(),
        *started_process_workers(),
        inputs_worker(),
        lost_run_watcher(),
        local_webapp(),
        api_server(),
        app_front_door(),
    ]
    parts += [Background(n, []) for n in ("redis-messaging", "postgres") if has_pid_file(n)]
    return [
        f"{bg.name}: {'running, pid ' + str(bg.pid()) if bg.pid() else 'stopped'}" for bg in parts
    ]
