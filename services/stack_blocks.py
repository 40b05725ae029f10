"""The blocks and secrets `stack start` makes so a first try works with nothing configured.

Why apart: they are Prefect API calls made once the server answers, not processes;
each keeps what the operator saved (a GcsBucket for outputs, a real web app, a
cluster API token) and fills in only what is missing.
"""

from __future__ import annotations

import secrets

from prefect_cs.core.home import private_folder
from prefect_cs.core.settings import get_settings
from prefect_cs.services.stack_parts import local_webapp, local_webapp_log, local_webapp_url


def register_blocks() -> None:
    from prefect_cs import blocks

    for name in blocks.__all__:
        block = getattr(blocks, name)
        if hasattr(block, "register_type_and_schema"):
            block.register_type_and_schema(_sync=True)


def ensure_storage_blocks() -> list[str]:
    """Local folders for outputs and task storage, unless blocks of those names exist (e.g. a
    GcsBucket)."""
    from prefect.blocks.core import Block
    from prefect.filesystems import LocalFileSystem
    from prefect_cs.core.task_storage import TASK_STORAGE_BLOCK

    settings = get_settings()
    made = []
    for slug, folder in ((settings.outputs_block, "outputs"), (TASK_STORAGE_BLOCK, "task-storage")):
        try:
            Block.load(slug, _sync=True)
        except ValueError:
            path = private_folder(settings.home / folder, settings.home)
            LocalFileSystem(basepath=str(path)).save(
                slug.split("/", 1)[1], overwrite=True, _sync=True
            )
            made.append(f"storage block {slug} → {path}")
    return made


def ensure_api_token() -> str:
    """A random cluster API token unless one is set: a first try is authenticated too."""
    from prefect_cs.security.secrets import SecretNotFound, get_backend

    name = get_settings().api.secret_name
    backend = get_backend(None)
    try:
        backend.get(name)
        return f"cluster API token: the cluster secret {name}"
    except SecretNotFound:
        backend.set(name, secrets.token_urlsafe(32))
        return f"cluster API token: made; read it with `prefect-cs secrets get {name}`"


def ensure_webapp() -> str:
    """Keep a saved web app block; without one, point at the local web app (a random token).

    A block that already points at the local web app (a restart) starts it again with its token.
    """
    from prefect.blocks.core import Block
    from prefect_cs.blocks.webapp import WebApp

    name = get_settings().webapp_block
    try:
        block = Block.load(name, _sync=True)
    except ValueError:
        block = WebApp(base_url=local_webapp_url(), token=secrets.token_urlsafe(24))
        block.save(name.split("/", 1)[1], overwrite=True, _sync=True)
    if block.base_url.rstrip("/") != local_webapp_url() or block.token is None:
        return f"web app: {block.base_url}"
    local_webapp(block.token.get_secret_value()).start()
    return f"web app: local stand-in {local_webapp_url()}, requests logged to {local_webapp_log()}"
