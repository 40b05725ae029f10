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


def load_outputs_storage() -> Block:
    """The filesystem block output zips go to (CS_OUTPUTS_BLOCK): a local folder or a GcsBucket."""
    from prefect_cs.core.settings import get_settings

    fix = "run `prefect-cs stack start` (a local folder) or save a GcsBucket under that name"
    return load_named_block(get_settings().outputs_block, "outputs storage block", fix)
