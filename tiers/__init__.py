"""Runtime tiers (local virtualenv, Docker image, Kubernetes Job): one base class holds the build
steps every tier shares; each tier overrides only what differs and declares its pool type and typed
job variables."""

from prefect_cs.tiers.base import Tier, get_tier, tier_for_pool_type

__all__ = ["Tier", "get_tier", "tier_for_pool_type"]
