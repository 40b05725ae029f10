"""Thumbnails for the web app's outputs page: `<output id>.png` per renderable output.

Compute Studio (1.6) shows, beside each renderable output, the PNG it reads from the outputs
storage's root under the output's id: cs-storage's layout (`write_pic`), next to
`<task_id>_renderable.zip`. The simulate flow calls `make_thumbnails` only after the web app
has been sent the result, and nothing here can change that result: every failure (a media type
that is not rendered, Chromium's time limit, the storage) is one warning line for that output,
never an exception and never a change to the flow's state.

The outputs are read back from the stored zip (the members the description names), not passed
as task parameters: Prefect walks a task's parameters, and a model's outputs may be large or
nest deep. runtime/render.py makes each PNG; CS_LIMITS_THUMBNAIL_COUNT caps how many.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.logging import get_logger
from prefect_cs.core.blocks import load_outputs_storage
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.storage import close_local, outputs_block
from prefect_cs.runtime.render import NotRenderable, RenderFailed, thumbnail


def make_thumbnails(stored: dict[str, Any] | None) -> list[str]:
    """After delivery: the thumbnails task, if the run stored outputs (and
    CS_LIMITS_THUMBNAIL_COUNT is not 0: no task run at all then); never raises."""
    if not stored or get_settings().limits.thumbnail_count == 0:
        return []
    try:
        renderable = stored["description"]["renderable"]
        environment = stored.get("environment")
        return thumbnails_task(renderable["ziplocation"], renderable["outputs"], environment)
    except Exception as exc:  # noqa: BLE001 - the result is delivered: thumbnails are extras
        logger = get_logger("prefect_cs.thumbnails")
        logger.warning("no thumbnails: %s: %s", type(exc).__name__, exc)
        return []


@task(name="render-thumbnails", retries=0)
def thumbnails_task(
    ziplocation: str, outputs: list[dict[str, Any]], environment: str | None = None
) -> list[str]:
    """`<id>.png` for each renderable output (the first CS_LIMITS_THUMBNAIL_COUNT); returns the
    names written. One warning line per output that gets none. environment: the model's, on
    this machine (tiers/base.py `render_environment`), whose BokehJS draws bokeh outputs."""
    logger = get_run_logger()
    cap = get_settings().limits.thumbnail_count
    chosen, skipped = outputs[:cap], outputs[cap:]
    if skipped:
        logger.warning(
            "%d renderable outputs get no thumbnail: over CS_LIMITS_THUMBNAIL_COUNT (%d)",
            *(len(skipped), cap),
        )
    if not chosen:
        return []
    try:
        storage = load_outputs_storage(outputs_block()[0])  # the block the zips went to
        members = read_members(storage, ziplocation, {o["filename"] for o in chosen})
    except Exception as exc:  # noqa: BLE001 - no thumbnails, and the run goes on as it was
        logger.warning("no thumbnails: %s could not be read back: %s", ziplocation, exc)
        return []
    written = []
    for output in chosen:
        name = thumbnail_name(output)
        try:
            store_png(storage, name, render_one(output, members, environment))
            written.append(name)
        except (NotRenderable, RenderFailed) as exc:
            logger.warning("no thumbnail for %s: %s", describe(output), exc)
        except Exception as exc:  # noqa: BLE001 - one output's problem is not the others'
            logger.warning("no thumbnail for %s: %s: %s", describe(output), type(exc).__name__, exc)
    if written:
        logger.info("thumbnails stored: %s", ", ".join(written))
    return written


def thumbnail_name(output: dict[str, Any]) -> str:
    """cs-storage's name: the output's id (a UUID the platform made) + .png, at the root."""
    return f"{output['id']}.png"


def describe(output: dict[str, Any]) -> str:
    return f"{output.get('media_type')} output {str(output.get('title'))[:80]!r}"


def read_members(storage: Any, ziplocation: str, names: set[str]) -> dict[str, bytes]:
    """The named members of the renderable zip, read back from the outputs storage."""
    with zipfile.ZipFile(io.BytesIO(storage.read_path(ziplocation))) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if i.filename in names}


def render_one(
    output: dict[str, Any], members: dict[str, bytes], environment: str | None = None
) -> bytes:
    data = members.get(output["filename"])
    if data is None:
        raise RenderFailed(f"{output['filename']!r} is not in the stored zip")
    where = Path(environment) if environment else None
    return thumbnail(output["media_type"], output.get("title") or "", data, where).png


def store_png(storage: Any, name: str, png: bytes) -> None:
    """Through the outputs block, like the zips: 0600 in a local folder."""
    close_local(storage, storage.write_path(name, png))
