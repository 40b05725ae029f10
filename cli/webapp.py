"""`prefect-cs webapp set`: save the block that tells flows where to send results.

The token is read from stdin or CS_WEBAPP_TOKEN (through the settings tree) so it never
lands in shell history, and --help never shows it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from httpx import HTTPStatusError
from prefect_cs.cli._utilities import EXPECTED, CSTyper, console, exit_on_error, exit_with_error
from pydantic import SecretStr

webapp_app = CSTyper(help="The web app that receives results.")


OUTPUTS_NAME = "cs-outputs"  # the GcpCredentials and GcsBucket blocks --outputs-bucket saves


@webapp_app.command("set")
def webapp_set(
    url: str = typer.Option(..., help="The web app's base URL."),
    token_stdin: bool = typer.Option(
        False, "--token-stdin", help="Read the token from stdin (else from CS_WEBAPP_TOKEN)."
    ),
    outputs_bucket: str | None = typer.Option(
        None,
        "--outputs-bucket",
        help="The Cloud Storage bucket the web app reads outputs from (C/S: its BUCKET); saves"
        f" GcpCredentials and GcsBucket blocks `{OUTPUTS_NAME}` and checks the bucket.",
    ),
    gcp_credentials_file: Path | None = typer.Option(
        None,
        "--gcp-credentials-file",
        help="A service-account key (JSON) that may write to --outputs-bucket; unset: the"
        " machine's default Google credentials.",
    ),
    outputs_block: str | None = typer.Option(
        None,
        "--outputs-block",
        help="A storage block already saved (`gcs-bucket/NAME`, `local-file-system/NAME`) for"
        " the outputs; `default`: CS_OUTPUTS_BLOCK's. Unset: what the saved block had.",
    ),
) -> None:
    """Save the web app block (the token is never on the command line) and where the web app
    reads outputs: every run loads this block, so workers and jobs need no restart."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.core.settings import get_settings

    settings = get_settings()
    value = sys.stdin.readline().rstrip("\n") if token_stdin else token_from(settings.webapp_token)
    if not value:
        exit_with_error("no token: pipe it with --token-stdin or set CS_WEBAPP_TOKEN")
    if outputs_bucket and outputs_block:
        exit_with_error("give --outputs-bucket or --outputs-block, not both")
    if gcp_credentials_file and not outputs_bucket:
        exit_with_error("--gcp-credentials-file goes with --outputs-bucket")
    name = settings.webapp_block.split("/", 1)[1]
    # An API's refusal is shown by its status line only: its body can echo the token.
    with exit_on_error("the web app block was not saved: ", catch=(*EXPECTED, HTTPStatusError)):
        outputs = outputs_choice(outputs_bucket, gcp_credentials_file, outputs_block, name)
        WebApp(base_url=url, token=value, outputs_block=outputs).save(name, overwrite=True)
    console.print(f"web app set to {url}")
    console.print(f"outputs go to {outputs or settings.outputs_block + ' (CS_OUTPUTS_BLOCK)'}")


def outputs_choice(
    bucket: str | None, key_file: Path | None, block: str | None, webapp_name: str
) -> str | None:
    """The web app block's outputs_block: a new GcsBucket, a block named, or what it had."""
    if bucket:
        return save_outputs_bucket(bucket, key_file)
    if block == "default":
        return None
    if block:
        load_outputs_storage_checked(block)
        return block
    return saved_outputs_block(webapp_name)


def saved_outputs_block(webapp_name: str) -> str | None:
    from prefect_cs.blocks.webapp import WebApp

    try:
        return WebApp.load(webapp_name, _sync=True).outputs_block
    except ValueError:  # none saved yet
        return None


def load_outputs_storage_checked(block: str) -> None:
    from prefect_cs.core.blocks import load_outputs_storage
    from prefect_cs.core.errors import InvalidValue

    if "/" not in block:
        raise InvalidValue(f"--outputs-block {block!r}: name it as `<type slug>/<name>`")
    load_outputs_storage(block)


def save_outputs_bucket(bucket: str, key_file: Path | None) -> str:
    """GcpCredentials and GcsBucket blocks for the web app's bucket, once the bucket answered."""
    from prefect_cs.core.errors import OutputsNotStored
    from prefect_cs.flows.storage import gcs_problem
    from prefect_gcp import GcpCredentials
    from prefect_gcp.cloud_storage import GcsBucket

    info = read_service_account(key_file) if key_file else None
    credentials = GcpCredentials(service_account_info=info)
    storage = GcsBucket(bucket=bucket, gcp_credentials=credentials)
    try:
        storage.get_bucket()
    except Exception as exc:  # noqa: BLE001 - named with its fix, nothing saved
        raise OutputsNotStored(
            f"the outputs bucket {bucket!r} was not saved: {gcs_problem(bucket, exc)}"
        ) from exc
    credentials.save(OUTPUTS_NAME, overwrite=True)
    storage.save(OUTPUTS_NAME, overwrite=True)
    return f"{GcsBucket.get_block_type_slug()}/{OUTPUTS_NAME}"


def read_service_account(key_file: Path) -> dict:
    """The key's JSON; InvalidValue naming the file (never its contents) when it is not one."""
    from prefect_cs.core.errors import InvalidValue

    try:
        info = json.loads(key_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidValue(
            f"--gcp-credentials-file {key_file}: not a readable JSON key ({type(exc).__name__});"
            " download the service account's key as JSON"
        ) from None
    if not isinstance(info, dict) or not {"client_email", "private_key"} <= set(info):
        raise InvalidValue(
            f"--gcp-credentials-file {key_file}: not a service-account key (no client_email"
            " or private_key); download the service account's key as JSON"
        )
    return info


def token_from(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret else None
