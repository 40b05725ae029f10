"""`prefect-cs redis init-acl`: create the admin, scheduler and executor users, disable `default`.

The target is a saved `cs-redis` block (--block), or --host/--port/--url with
passwords from CS_REDIS_<ROLE>_PASSWORD environment variables, so no password
is typed on a command line. Any failure talking to Redis (refused, unreachable,
wrong password) is one error line: this runs in setup scripts. The platform turns
Redis's and the block store's failures into its own errors (security/redis_acl.py,
core/blocks.py), so a bug here still shows its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import typer
from prefect_cs.cli._utilities import EXPECTED, CSTyper, console, exit_on_error
from rich.table import Table

if TYPE_CHECKING:
    from prefect_cs.security.redis_acl import RedisConfig

redis_app = CSTyper(help="The Redis that hands job inputs to model jobs.")


@redis_app.callback()
def redis_main() -> None:
    """The Redis that hands job inputs to model jobs (kept a group, for `redis init-acl`)."""


FIX = (
    "save a cs-redis block under that name, or give --host/--port or --url with"
    " CS_REDIS_ADMIN_PASSWORD, CS_REDIS_SCHEDULER_PASSWORD and CS_REDIS_EXECUTOR_PASSWORD set"
)


def load_config(block: str, host: str | None, port: int | None, url: str | None) -> RedisConfig:
    """From options and CS_REDIS_* variables when any connection option is given, else the block
    (a missing one is NotConfigured naming both ways)."""
    from prefect_cs.core.blocks import load_named_block
    from prefect_cs.security.redis_acl import RedisConfig

    if host or port or url:
        return RedisConfig.from_env(host=host, port=port, url=url)
    return load_named_block(block, "cs-redis block", FIX, RedisConfig)  # type: ignore[return-value]


def initial_from_settings() -> str | None:
    """CS_REDIS_INITIAL_PASSWORD through the settings tree (never a typer envvar: --help
    would offer it, and every CS_* variable is read in one place)."""
    from prefect_cs.core.settings import get_settings

    secret = get_settings().redis.initial_password
    return secret.get_secret_value() if secret else None


@redis_app.command("init-acl")
def init_acl_cmd(
    block: str = typer.Option("default", help="Name of the cs-redis block to read (or save)."),
    host: str = typer.Option(None, help="Redis host (then passwords come from CS_REDIS_*)."),
    port: int = typer.Option(None, help="Redis port."),
    url: str = typer.Option(None, help="redis:// or rediss:// URL, without credentials."),
    initial_username: str = typer.Option(
        "default", help="User of the first connection, before the admin exists."
    ),
    initial_password: str = typer.Option(
        None,
        help="The server's current password for that user (default: CS_REDIS_INITIAL_PASSWORD;"
        " prefer the variable, which stays out of shell history).",
        show_default=False,
    ),
    save: bool = typer.Option(
        False, "--save", help="Save the options-built config as the cs-redis block --block."
    ),
) -> None:
    """Create or update the users (idempotent) and print their rules, without passwords."""
    from prefect_cs.security.redis_acl import init_acl

    config = load_config(block, host, port, url)
    result = init_acl(config, initial_username, initial_password or initial_from_settings())
    table = Table("user", "rules", title="Redis ACL")
    for user, rules in sorted(result.users.items()):
        table.add_row(user, rules)
    console.print(table)
    console.print(f"ACL {result.persisted}")
    if save:
        # An API's refusal is shown by its status line only: its body can echo the passwords.
        refused = (*EXPECTED, httpx.HTTPStatusError)
        with exit_on_error("the ACL is set but the block was not saved: ", catch=refused):
            config.save(block, overwrite=True, _sync=True)
        console.print(f"saved cs-redis block {block!r}")
