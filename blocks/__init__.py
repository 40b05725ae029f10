"""Prefect blocks of the platform: register them with
`prefect block register -m prefect_cs.blocks`."""

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.blocks.redis import RedisConfig
from prefect_cs.blocks.webapp import WebApp

__all__ = ["ModelConfig", "PublishedTag", "RedisConfig", "WebApp"]
