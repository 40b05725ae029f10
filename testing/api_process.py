"""The cluster API as `stack start` runs it (`prefect-cs api serve`), for a test module: started
on a port, ready once `/health` answers, stopped after, whichever protocol the module speaks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from prefect_cs.services.stack_parts import answers_health, api_server
from prefect_cs.services.supervisor import Background


@contextlib.contextmanager
def serving_api(
    name: str,
    port: int,
    v0_token: str | None = None,
    env: dict[str, str] | None = None,
    logs: list[Path] | None = None,
) -> Iterator[str]:
    """The API process named `name-<port>` on `port`, its base URL yielded; `v0_token` becomes
    the cluster secret CLUSTER_API_TOKEN first; `env` is added to the stack's environment;
    `logs` gets its log file (for tests that read what the API logged)."""
    if v0_token is not None:
        from prefect_cs.security.secrets import get_backend

        get_backend(None).set("CLUSTER_API_TOKEN", v0_token)
    standard = api_server(port)
    bg = Background(f"{name}-{port}", standard.argv, {**standard.env, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    if logs is not None:
        logs.append(bg.log_file)
    try:
        bg.start_and_wait(lambda: answers_health(url), timeout=90, what="the cluster API")
        yield url
    finally:
        bg.stop()
