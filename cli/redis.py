"""`prefect-cs redis init-acl`: create the admin, scheduler and executor users, disable `default`.

The target is a saved `cs-redis` block (--block), or --host/--port/--url with
passwords from CS_REDIS_<ROLE>_PASSWORD environment variables, so no password
is typed on a command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from prefect_cs.security.redis_acl import RedisConfig

redis_app = typer.Typer(help="The Redis that hands job inputs to model jobs.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@redis_app.callback()
def redis_main() -> None:
    """The Redis that hands job inputs to model jobs (kept a group, for `redis init-acl`)."""


def fail(message: str) -> None:
    """One clear line and exit code 1: operators need the fix, not a traceback."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def one_line(exc: Exception) -> str:
    """The first line of an error; pydantic errors reduced to field and message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    from prefect_cs.security.redis_acl import AclError

    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return first if isinstance(exc, AclError) else f"{type(exc).__name__}: {first}"


def load_config(block: str, host: str | None, port: int | None, url: str | None) -> RedisConfig:
    """From options and CS_REDIS_* variables when any connection option is given, else the block."""
    from prefect_cs.security.redis_acl import RedisConfig

    try:
        if host or port or url:
            return RedisConfig.from_env(host=host, port=port, url=url)
        return RedisConfig.load(block, _sync=True)
    except Exception as exc:
        fail(
            f"no usable Redis config ({one_line(exc)}): save a cs-redis block named {block!r},"
            " or give --host/--port or --url with CS_REDIS_ADMIN_PASSWORD,"
            " CS_REDIS_SCHEDULER_PASSWORD and CS_REDIS_EXECUTOR_PASSWORD set"
        )


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
        envvar="CS_REDIS_INITIAL_PASSWORD",
        help="The server's current password for that user (prefer the env variable).",
    ),
    save: bool = typer.Option(
        False, "--save", help="Save the options-built config as the cs-redis block --block."
    ),
) -> None:
    """Create or update the users (idempotent) and print their rules, without passwords."""
    from prefect_cs.security.redis_acl import init_acl

    config = load_config(block, host, port, url)
    try:
        result = init_acl(config, initial_username, initial_password)
    except Exception as exc:  # AclError, a refused or unreachable server: one line each
        fail(one_line(exc))
    table = Table("user", "rules", title="Redis ACL")
    for user, rules in sorted(result.users.items()):
        table.add_row(user, rules)
    console.print(table)
    console.print(f"ACL {result.persisted}", highlight=False)
    if save:
        try:
            config.save(block, overwrite=True, _sync=True)
        except Exception as exc:
            fail(f"the ACL is set but the block was not saved: {one_line(exc)}")
        console.print(f"saved cs-redis block {block!r}", highlight=False)
