"""Writes output zips to the outputs storage block (LocalFileSystem or GcsBucket).

A write that fails becomes one OutputsNotStored that names the storage (the
bucket or folder, and the CS_OUTPUTS_BLOCK it came from), the problem (no such
bucket, credentials refused, storage not answering) and its fix: the simulate
flow sends that text to the web app in its FAIL, so an operator reading it
knows what to change without opening the job's logs. Google's client retries
an unreachable endpoint by itself (about two minutes) before it gives up.

A zip in a local folder is a user's result: it is made 0600 (its folder,
`$CS_HOME/outputs`, is 0700), as nothing else on the machine may read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_cs.core.blocks import load_outputs_storage
from prefect_cs.core.errors import OutputsNotStored
from prefect_cs.core.home import PRIVATE_FILE
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.notify import load_webapp


def store_zips(zips: dict[str, bytes]) -> dict[str, str]:
    """Write each zip and return where it landed, as the block reports it."""
    name, origin = outputs_block()
    storage = load_outputs_storage(name)
    where = {}
    for location, content in zips.items():
        try:
            result = storage.write_path(location, content)
            close_local(storage, result)
        except Exception as exc:  # noqa: BLE001 - every storage failure gets its fix named
            raise not_stored(storage, location, exc, name, origin) from exc
        where[location] = str(result or location)
    return where


WEBAPP_ORIGIN = "the web app block's outputs_block (`prefect-cs webapp set`)"


def outputs_block() -> tuple[str, str]:
    """The storage block output zips go to, and what chose it: CS_OUTPUTS_BLOCK where the
    operator set it; else the web app's own (`prefect-cs webapp set --outputs-bucket`: where
    C/S reads them, kept in the block every run loads anyway, so no worker, job or server
    needs a restart or a variable); else the local folder `stack start` made."""
    settings = get_settings()
    if "outputs_block" in settings.model_fields_set:
        return settings.outputs_block, "CS_OUTPUTS_BLOCK"
    try:
        chosen = load_webapp().outputs_block
    except LookupError:  # no web app block: the run's delivery says so; the zips still go
        chosen = None
    if chosen:
        return chosen, WEBAPP_ORIGIN
    return settings.outputs_block, "CS_OUTPUTS_BLOCK's default"


def close_local(storage: Any, written: Any) -> None:
    """A zip written to a local folder (LocalFileSystem) is readable by its owner only."""
    from prefect.filesystems import LocalFileSystem

    if isinstance(storage, LocalFileSystem) and written:
        Path(str(written)).chmod(PRIVATE_FILE)


def not_stored(
    storage: Any, location: str, exc: Exception, block: str, origin: str
) -> OutputsNotStored:
    bucket = getattr(storage, "bucket", None)
    target = f"GCS bucket {bucket!r}" if bucket else f"folder {getattr(storage, 'basepath', '?')!r}"
    problem = gcs_problem(bucket, exc) if bucket else folder_problem(exc)
    return OutputsNotStored(
        f"could not write {location} to the outputs storage ({target}, block {block!r}"
        f" named by {origin}): {problem}"
    )


def gcs_problem(bucket: str, exc: Exception) -> str:
    """What went wrong with a bucket, by Google's status code or exception, and what fixes it."""
    from google.api_core.exceptions import RetryError
    from google.auth.exceptions import GoogleAuthError

    text = f"{type(exc).__name__}: {exc}"[:600]
    code = getattr(exc, "code", None)
    if code == 404:
        return (
            f"the bucket does not exist ({text}); create it (`gcloud storage buckets create"
            f" gs://{bucket}`) or name an existing bucket in the block"
        )
    if code in (401, 403) or isinstance(exc, GoogleAuthError):
        return (
            f"the credentials were refused ({text}); fix the block's GcpCredentials, and give"
            f" its service account roles/storage.objectCreator on gs://{bucket}"
        )
    if isinstance(exc, (RetryError, OSError)):
        return (
            f"Cloud Storage did not answer ({text}); check the job's network route to"
            " storage.googleapis.com (or STORAGE_EMULATOR_HOST where one is set), then run"
            " the simulation again"
        )
    return f"{text}; check the block with `prefect block inspect` and the bucket's settings"


def folder_problem(exc: Exception) -> str:
    return (
        f"{type(exc).__name__}: {exc}; the folder must exist and be writable by the job"
        " (on the Docker tier it is mounted at the same path)"
    )
