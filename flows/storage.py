"""Writes output zips to the outputs storage block (LocalFileSystem or GcsBucket)."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect_cs.core.errors import NotConfigured
from prefect_cs.core.settings import get_settings


def load_outputs_storage() -> Block:
    name = get_settings().outputs_block
    try:
        return Block.load(name, _sync=True)
    except ValueError as exc:
        raise NotConfigured(
            f"no outputs storage block {name!r}: run `prefect-cs stack init` (local folder) or save a GcsBucket"
        ) from exc


def store_zips(zips: dict[str, bytes]) -> dict[str, str]:
    """Write each zip and return where it landed, as the block reports it."""
    storage = load_outputs_storage()
    where = {}
    for location, content in zips.items():
        result = storage.write_path(location, content)
        where[location] = str(result or location)
    return where
