"""`prefect-cs pool KIND`: create or update one tier's work pool by hand.

Publishing creates pools as it deploys; this is for an operator preparing a
worker before the first publish, or after editing a base job template. The
pool's name and type come from the tier that runs on it (prefect_cs.tiers).
"""

from __future__ import annotations

import typer
from prefect_cs.cli._utilities import console


def pool_cmd(kind: str = typer.Argument(..., help="process | docker | kubernetes")) -> None:
    """Create or update a work pool from its base job template in work_pools/."""
    from prefect_cs.tiers import tier_for_pool_type
    from prefect_cs.work_pools.pools import ensure_pool

    tier = tier_for_pool_type(kind)  # an unknown kind is a ValueError naming the known ones
    ensure_pool(tier.pool_name, tier.pool_type)
    console.print(f"work pool {tier.pool_name} ({tier.pool_type}) is up to date")
