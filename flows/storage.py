"""Writes output zips to the outputs storage block (LocalFileSystem or GcsBucket)."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect_cs.core.blocks import load_named_block
from prefect_cs.core.settings import get_settings


def load_outputs_storage() -> Block:
    fix = "run `prefect-cs stack start` (a local folder) or save a GcsBucket under that name"
    return load_named_block(get_settings().outputs_block, "outputs storage block", fix)


def store_zips(zips: dict[str, bytes]) -> dict[str, str]:
    """Write each zip and return where it landed, as the block reports it."""
    storage = load_outputs_storage()
    where = {}
    for location, content in zips.items():
        result = storage.write_path(location, content)
        where[location] = str(result or location)
    return where
