"""Writes output zips to the outputs storage block (LocalFileSystem or GcsBucket)."""

from __future__ import annotations

from prefect_cs.core.blocks import load_outputs_storage


def store_zips(zips: dict[str, bytes]) -> dict[str, str]:
    """Write each zip and return where it landed, as the block reports it."""
    storage = load_outputs_storage()
    where = {}
    for location, content in zips.items():
        result = storage.write_path(location, content)
        where[location] = str(result or location)
    return where
