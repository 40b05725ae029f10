"""Reading model config YAML files (`config/OWNER/TITLE.yaml`) into the registry.

`register` is the one door into the registry (`models register`, `/sync/`, the tests'
helpers): it keeps the platform's record of tags and refuses a repo_url the platform
would not clone (core/repo_urls.py), so the operator hears it at once, not at publish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import ConfigError
from prefect_cs.core.names import image_name
from prefect_cs.core.repo_urls import clone_source
from prefect_cs.core.settings import get_settings
from pydantic import ValidationError

# Fields a YAML file may set; the rest (published tags, staging/latest) is the platform's record.
OWNED_BY_PLATFORM = {"published_tags", "staging_tag", "latest_tag"}


def read_config(path: Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping of model config fields")
    unknown = set(data) - set(ModelConfig.model_fields) - {"block_type_slug"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(ModelConfig.model_fields)}"
        )
    data = {k: v for k, v in data.items() if k not in OWNED_BY_PLATFORM}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ModelConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


def check_repo_source(config: ModelConfig) -> ModelConfig:
    """A ConfigError naming the fix when publish would refuse to clone the config's repo_url."""
    clone_source(config.repo_url, get_settings().local_repo_prefixes)
    return config


def register(config: ModelConfig) -> ModelConfig:
    """Save the config, keeping the platform's record of published and promoted tags."""
    check_repo_source(config)
    try:
        existing = ModelConfig.for_model(config.owner, config.title)
    except LookupError:
        existing = None
    if existing is not None:
        if (existing.owner, existing.title) != (config.owner, config.title):
            raise ConfigError(
                f"{config.owner}/{config.title} collides with registered"
                f" {existing.owner}/{existing.title}"
                " (names are compared lowercase with '_' as '-'): choose another title"
            )
        config.published_tags = existing.published_tags
        config.staging_tag = existing.staging_tag
        config.latest_tag = existing.latest_tag
    check_image_name(config)
    config.save_model()
    return config


def check_image_name(config: ModelConfig) -> None:
    """Refuse a model whose image repository another registered model already has: one
    model's build would overwrite the other's promoted image."""
    mine = image_name(config.owner, config.title)
    for other in all_models():
        if other.slug != config.slug and image_name(other.owner, other.title) == mine:
            raise ConfigError(
                f"{config.owner}/{config.title} would share the image repository {mine!r} with"
                f" registered {other.owner}/{other.title}: choose another owner or title"
            )


def all_models() -> list[ModelConfig]:
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(
            ModelConfig.get_block_type_slug(), limit=1000
        )
    return [ModelConfig._from_block_document(doc) for doc in documents]
