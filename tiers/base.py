"""What every tier's environment builder does, so the publish flow stays one flow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag

Logger = logging.Logger | logging.LoggerAdapter


class EnvironmentBuilder(Protocol):
    tier: str
    pool_type: str

    def build(self, model: ModelConfig, source: Path, tag: str, logger: Logger) -> PublishedTag:
        """Create the model's isolated environment for `tag` from its checked-out source."""

    def test(self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger) -> None:
        """Run the model's own tests inside the environment; raise StepFailed on failure."""

    def model_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() inside the new environment; raise StepFailed (and discard) on failure."""

    def push(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> PublishedTag:
        """Make the environment available to the tier's workers (a no-op for local virtualenvs)."""

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        """Remove an environment that failed its tests."""

    def job_variables(self, model: ModelConfig, entry: PublishedTag) -> dict:
        """The simulate deployment's job variables for this tier's work pool."""


def get_builder(tier: str) -> EnvironmentBuilder:
    if tier == "local":
        from prefect_cs.tiers.local import VenvBuilder

        return VenvBuilder()
    if tier == "docker":
        from prefect_cs.tiers.docker import DockerBuilder

        return DockerBuilder()
    if tier == "kubernetes":
        from prefect_cs.tiers.kubernetes import KubernetesBuilder

        return KubernetesBuilder()
    raise ValueError(f"unknown tier {tier!r}: use local, docker or kubernetes")
