"""Checks a model's outputs and writes them in the layout cs-storage writes.

`<task_id>_renderable.zip` and `<task_id>_downloadable.zip`, one file per
output named title + extension, so the web app's existing readers work.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import uuid
import zipfile
from typing import Any

from prefect_cs.core.errors import MalformedOutputs

TEXT_TYPES = {"table": "html", "CSV": "csv", "Markdown": "md", "Text": "txt"}
BINARY_TYPES = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MP3": "mp3",
    "MP4": "mp4",
    "HDF5": "h5",
    "PDF": "pdf",
}
EXTENSIONS = {"bokeh": "json", **TEXT_TYPES, **BINARY_TYPES}
CATEGORIES = ("renderable", "downloadable")


def validate_outputs(result: Any) -> dict[str, list[dict[str, Any]]]:
    """Check every output against the contract and name the first problem found."""
    if not isinstance(result, dict):
        raise MalformedOutputs(
            f"run_model must return a dict with {CATEGORIES}, got {type(result).__name__}"
        )
    missing = [c for c in CATEGORIES if c not in result]
    if missing:
        raise MalformedOutputs(
            f"run_model's result is missing {missing}: it needs 'renderable' and 'downloadable' lists"
        )
    for category in CATEGORIES:
        if not isinstance(result[category], list):
            raise MalformedOutputs(
                f"'{category}' must be a list of outputs, got {type(result[category]).__name__}"
            )
        for index, output in enumerate(result[category]):
            _check_output(f"{category}[{index}]", output)
    return {c: result[c] for c in CATEGORIES}


def _check_output(where: str, output: Any) -> None:
    if not isinstance(output, dict):
        raise MalformedOutputs(f"output {where} must be a dict, got {type(output).__name__}")
    for key in ("media_type", "title", "data"):
        if key not in output:
            raise MalformedOutputs(
                f"output {where} ({output.get('title', 'untitled')!r}) has no {key!r}"
            )
    media_type, title, data = output["media_type"], output["title"], output["data"]
    if media_type not in EXTENSIONS:
        raise MalformedOutputs(
            f"output {where} ({title!r}) has media_type {media_type!r}; allowed: {', '.join(EXTENSIONS)}"
        )
    if not isinstance(title, str) or not title.strip():
        raise MalformedOutputs(f"output {where} has an empty or non-string title")
    if media_type == "bokeh" and not isinstance(data, (dict, list)):
        raise MalformedOutputs(
            f"output {where} ({title!r}) is bokeh but its data is not a JSON object"
        )
    if media_type in TEXT_TYPES and not isinstance(data, str):
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type} but its data is not text"
        )
    if media_type in BINARY_TYPES:
        _check_base64(where, title, media_type, data)


def _check_base64(where: str, title: str, media_type: str, data: Any) -> None:
    if not isinstance(data, str):
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type}: its data must be a base64 string"
        )
    try:
        base64.b64decode(data.encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type} but not valid base64: {exc}"
        ) from exc


def _as_bytes(output: dict[str, Any]) -> bytes:
    media_type, data = output["media_type"], output["data"]
    if media_type == "bokeh":
        return json.dumps(data).encode()
    if media_type in BINARY_TYPES:
        return base64.b64decode(data.encode())
    return data.encode()


def filename(output: dict[str, Any]) -> str:
    extension = EXTENSIONS[output["media_type"]]
    title = output["title"]
    return title if title.endswith(f".{extension}") else f"{title}.{extension}"


def build_zips(
    task_id: str, outputs: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Return the web app's `outputs` description and the zip bytes per zip location."""
    description: dict[str, Any] = {}
    zips: dict[str, bytes] = {}
    for category in CATEGORIES:
        location = f"{task_id}_{category}.zip"
        buffer = io.BytesIO()
        entries = []
        with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
            for output in outputs[category]:
                name = filename(output)
                archive.writestr(name, _as_bytes(output))
                entries.append(
                    {
                        "id": str(uuid.uuid4()),
                        "title": output["title"],
                        "media_type": output["media_type"],
                        "filename": name,
                    }
                )
        description[category] = {"ziplocation": location, "outputs": entries}
        zips[location] = buffer.getvalue()
    return description, zips
