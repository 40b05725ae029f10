"""`prefect-cs pool KIND`: create or update one tier's work pool by hand.

Publishing creates pools as it deploys; this is for an operator preparing a
worker before the first publish, or after editing a base job template.
"""

from __future__ import annotations

import typer
from prefect_cs.cli._utilities import console, exit_with_error

KINDS = "process, docker or kubernetes"


def pool_cmd(kind: str = typer.Argument(..., help="process | docker | kubernetes")) -> None:
    """Create or update a work pool from its base job template in work_pools/."""
    from prefect_cs.work_pools.pools import ensure_pool

    name, pool_type = pool_of(kind)
    ensure_pool(name, pool_type)
    console.print(f"work pool {name} ({pool_type}) is up to date")


def pool_of(kind: str) -> tuple[str, str]:
    """(pool name, pool type) for a pool type, from the tier that owns it."""
    try:
        from prefect_cs.tiers import tier_for_pool_type
    except ImportError:  # until prefect_cs.tiers holds the tier → pool map
        from prefect_cs.deployments.deploy import pool_for

        try:
            return pool_for({"process": "local"}.get(kind, kind))
        except KeyError:
            exit_with_error(f"pool kind must be {KINDS}")
    try:
        tier = tier_for_pool_type(kind)
    except (KeyError, LookupError, ValueError):
        exit_with_error(f"pool kind must be {KINDS}")
    return tier.pool_name, tier.pool_type
