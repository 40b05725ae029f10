"""`prefect-cs pool KIND`: create or update one tier's work pool by hand.

Publishing creates pools as it deploys; this is for an operator preparing a
worker before the first publish, or after editing a base job template. The
pool's name and type come from the tier that runs on it (prefect_cs.tiers).
"""

from __future__ import annotations

import typer
from prefect_cs.cli._utilities import console


def pool_cmd(
    kind: str = typer.Argument(..., help="a tier (local | docker | kubernetes) or process"),
) -> None:
    """Create or update a tier's work pool from its base job template in work_pools/."""
    from prefect_cs.tiers import get_tier, tier_for_pool_type
    from prefect_cs.tiers.base import TIERS
    from prefect_cs.work_pools.pools import ensure_pool

    # A tier's name, or a pool type (an unknown one is a ValueError naming the known ones).
    tier = get_tier(kind) if kind in TIERS else tier_for_pool_type(kind)
    ensure_pool(tier.pool_name, tier.pool_type)
    console.print(f"work pool {tier.pool_name} ({tier.pool_type}) is up to date")
