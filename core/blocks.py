"""Loading the block a setting names, with the command that creates it when it is missing.

The web app, the outputs storage and Redis are all "a block named by a CS_*
setting"; one loader gives every one of them the same clear error.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect_cs.core.errors import NotConfigured


def load_named_block(name: str, what: str, fix: str, block_class: type[Block] = Block) -> Block:
    """`block_class.load(name)`, or NotConfigured("no <what> <name>: <fix>")."""
    try:
        return block_class.load(name, _sync=True)
    except ValueError as exc:
        raise NotConfigured(f"no {what} {name!r}: {fix}") from exc


# Block classes by slug, imported directly: `Block.load("<slug>/<name>")` first imports every
# installed Prefect collection to find the class (5 s on a busy 2-core machine, in each run).
STORAGE_CLASSES = {
    "local-file-system": ("prefect.filesystems", "LocalFileSystem"),
    "gcs-bucket": ("prefect_gcp.cloud_storage", "GcsBucket"),
}


def storage_block_class(name: str) -> type[Block]:
    """The class of a filesystem block named `<slug>/<name>`; Block (found by dispatch) else."""
    import importlib

    module, attribute = STORAGE_CLASSES.get(name.partition("/")[0], (None, None))
    if module is None:
        return Block
    return getattr(importlib.import_module(module), attribute)


def load_storage_block(name: str, what: str, fix: str) -> Block:
    """A filesystem block by `<slug>/<name>`, through its own class where it is known."""
    block_class = storage_block_class(name)
    if block_class is Block:
        return load_named_block(name, what, fix)
    return load_named_block(name.partition("/")[2], what, fix, block_class)


def load_outputs_storage(name: str | None = None) -> Block:
    """The filesystem block output zips go to (`name`, else CS_OUTPUTS_BLOCK's): a local folder
    or a GcsBucket. flows/storage.py `outputs_block` says which one a run uses."""
    from prefect_cs.core.settings import get_settings

    fix = (
        "run `prefect-cs stack start` (a local folder), `prefect-cs webapp set --outputs-bucket`,"
        " or save a GcsBucket under that name"
    )
    return load_storage_block(name or get_settings().outputs_block, "outputs storage block", fix)


def load_collections_first() -> list[str]:
    """Import every installed Prefect collection (prefect-docker, -gcp, -kubernetes, -redis, this
    plugin) now, in the calling thread; returns their names. Call it before a process starts
    threads that use Prefect.

    Why: Prefect imports them on the first generic block load (`Block.load("<slug>/<name>")`:
    its task worker does one for the task storage at its first task run, on its event loop), in
    whichever thread gets there, unguarded; meanwhile another thread imports the same packages
    (a warm call importing the Docker SDK, say). An inputs server whose warming thread and task
    worker started at once hung for good in a CI run: neither logged again for 13 minutes, and
    every light call of that test module timed out. Imported here first, no thread imports
    them again."""
    from prefect.plugins import load_prefect_collections

    return sorted(load_prefect_collections())
