"""Checks a model's outputs and writes them in the layout cs-storage writes.

`<task_id>_renderable.zip` and `<task_id>_downloadable.zip`, one file per
output named title + extension, so the web app's existing readers work.
A title is the model's text, not a path: the member name is derived from it
(separators, `..`, NUL and control characters replaced, empty titles and
duplicates numbered, long names cut), while the description sent to the web
app keeps the title as the model gave it. Each output and the whole result
are size-capped, and a result has at most CS_LIMITS_OUTPUT_COUNT outputs
(`CS_LIMITS_*`, read once per result). Every step is linear in the number of
outputs: 20,000 tiny outputs once held a worker for 336 s (the settings tree
rebuilt per output, duplicate titles numbered by trying 2, 3, … each time).

What is accepted is what Compute Studio accepted, cs-storage's schema and
serializer (`cs_storage.serialize_to_json`), so an app whose cs-kit tests pass
never fails here on its output format: binary media types as bytes (the model
child base64-encodes them) or as base64 text, decoded as leniently as
cs-storage does (line breaks and other characters outside the alphabet are
skipped) and sent on in canonical form; bokeh data as any JSON value; text
types as text; any title, the empty one included.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import uuid
import zipfile
from typing import Any

from prefect_cs.core.errors import MalformedOutputs
from prefect_cs.core.jsonsafe import json_safe, replace_surrogates
from prefect_cs.core.settings import get_settings

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
MEMBER_BYTES = 200  # a member name's UTF-8 bytes, extension included (zip allows 65,535; disks 255)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def validate_outputs(result: Any) -> dict[str, list[dict[str, Any]]]:
    """Check every output against the contract and name the first problem found."""
    limits = get_settings().limits
    if not isinstance(result, dict):
        raise MalformedOutputs(
            f"run_model must return a dict with {CATEGORIES}, got {type(result).__name__}"
        )
    missing = [c for c in CATEGORIES if c not in result]
    if missing:
        raise MalformedOutputs(
            f"run_model's result is missing {missing}: it needs 'renderable' and 'downloadable'"
            " lists"
        )
    for category in CATEGORIES:
        if not isinstance(result[category], list):
            raise MalformedOutputs(
                f"'{category}' must be a list of outputs, got {type(result[category]).__name__}"
            )
    _check_count(result, limits.output_count)
    return {
        c: [
            _check_output(f"{c}[{i}]", output, limits.output_bytes)
            for i, output in enumerate(result[c])
        ]
        for c in CATEGORIES
    }


def _check_count(result: dict[str, Any], cap: int) -> None:
    """At most `cap` outputs in all, counted before any is looked at."""
    count = sum(len(result[category]) for category in CATEGORIES)
    if count > cap:
        counts = ", ".join(f"{len(result[c]):,} {c}" for c in CATEGORIES)
        raise MalformedOutputs(
            f"run_model returned {count:,} outputs ({counts}), over the cap of {cap:,} outputs"
            " per result: return fewer (put many tables in one CSV or a few downloadable"
            " files), or raise CS_LIMITS_OUTPUT_COUNT on the cluster"
        )


def _check_output(where: str, output: Any, cap: int) -> dict[str, Any]:
    """The output as stored: checked, binary data as canonical base64 text."""
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
            f"output {where} ({title!r}) has media_type {media_type!r}; allowed:"
            f" {', '.join(EXTENSIONS)}"
        )
    if media_type in TEXT_TYPES and not isinstance(data, str):
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type} but its data is not text"
        )
    if media_type in BINARY_TYPES:
        output = {**output, "data": _base64_text(where, title, media_type, data)}
    _check_size(where, title, output["data"], cap)
    return output


def _check_size(where: str, title: Any, data: Any, cap: int) -> None:
    """Text and base64 by their length; bokeh by the JSON it becomes."""
    size = len(data) if isinstance(data, str) else len(json.dumps(data, default=str))
    if size > cap:
        raise MalformedOutputs(
            f"output {where} ({str(title)[:80]!r}) is {size:,} bytes, over the cap of {cap:,} bytes"
            " per output: return less, or raise CS_LIMITS_OUTPUT_BYTES on the cluster"
        )


def _base64_text(where: str, title: Any, media_type: str, data: Any) -> str:
    """Canonical base64 of a binary output's data, as cs-storage's Base64Serializer reads it:
    bytes as they are, text through a lenient b64decode (only bad padding is refused)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return base64.b64encode(data).decode("ascii")
    if not isinstance(data, str):
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type}: its data must be bytes or base64 text,"
            f" got {type(data).__name__}"
        )
    try:
        raw = base64.b64decode(data.encode("utf-8"))
    except (binascii.Error, ValueError) as exc:
        raise MalformedOutputs(
            f"output {where} ({title!r}) is {media_type} but not valid base64: {exc}."
            " Return the raw bytes, or base64.b64encode(data).decode()"
        ) from exc
    return base64.b64encode(raw).decode("ascii")


def _as_bytes(output: dict[str, Any]) -> bytes:
    """Strict JSON for bokeh (NaN → null), UTF-8 for text (a lone surrogate → U+FFFD)."""
    media_type, data = output["media_type"], output["data"]
    if media_type == "bokeh":
        return json.dumps(json_safe(data)[0], allow_nan=False).encode()
    if media_type in BINARY_TYPES:
        return base64.b64decode(data.encode())
    return replace_surrogates(data).encode()


def safe_member(title: Any, extension: str, number: int) -> str:
    """A zip member name from a title: one flat file name, never a path; `output-N` if empty."""
    text = "" if title is None else str(title)
    text = replace_surrogates(text)
    stem = _UNSAFE.sub("_", text).replace("..", "_").strip().strip(".")
    suffix = f".{extension}"
    if stem.endswith(suffix):
        stem = stem[: -len(suffix)]
    return _cut(stem or f"output-{number}", suffix)


def _cut(stem: str, suffix: str) -> str:
    budget = MEMBER_BYTES - len(suffix.encode())
    return stem.encode()[:budget].decode("utf-8", "ignore") + suffix


def member_names(outputs: list[dict[str, Any]]) -> list[str]:
    """One distinct member name per output, in order: a repeated name gets ` (2)`, ` (3)`…

    Each stem remembers the last copy number it tried: names are only ever added, so every
    lower number is still taken, and n outputs of one title cost n tries, not n²/2."""
    names: list[str] = []
    seen: set[str] = set()
    tried: dict[tuple[str, str], int] = {}
    for number, output in enumerate(outputs, start=1):
        extension = EXTENSIONS[output["media_type"]]
        name = safe_member(output.get("title"), extension, number)
        stem = name[: -len(extension) - 1]
        copy = tried.get((stem, extension), 1)
        while name.lower() in seen:
            copy += 1
            name = _cut(stem, f" ({copy}).{extension}")
        tried[(stem, extension)] = copy
        seen.add(name.lower())
        names.append(name)
    return names


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
            for output, name in zip(
                outputs[category], member_names(outputs[category]), strict=True
            ):
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
