"""Simulation inputs handed to the job through Redis instead of flow parameters.

Inputs can be megabytes (a whole tax policy reform); as flow parameters they
would be stored in the Prefect database and shown in the UI. With Redis
configured (CS_REDIS_BLOCK names a `cs-redis` block), the submitter writes them
as the `scheduler` user to `job-<task id>` with an expiry, and the job reads
them back as the `executor` user, which may only GET `job-*` keys.
"""

from __future__ import annotations

from typing import Any

from prefect_cs.core.blocks import load_named_block
from prefect_cs.core.errors import NotConfigured
from prefect_cs.core.settings import get_settings
from prefect_cs.security.redis_acl import RedisConfig, get_job_inputs, put_job_inputs


def redis_configured() -> bool:
    return bool(get_settings().redis.block)


def _block() -> RedisConfig:
    name = get_settings().redis.block
    if not name:
        raise NotConfigured(
            "no Redis configured: set CS_REDIS_BLOCK to the name of a cs-redis block"
        )
    fix = f"save one with `prefect-cs redis init-acl --save --block {name}`"
    return load_named_block(name, "cs-redis block", fix, RedisConfig)  # type: ignore[return-value]


def executor_config() -> RedisConfig:
    """The job's identity: CS_REDIS_* variables when the job was given them, else the block."""
    password = get_settings().redis.executor_password
    if password and password.get_secret_value():
        return RedisConfig.from_env()
    return _block()


def stage_inputs(task_id: str, meta_param_dict: dict[str, Any], adjustment: dict[str, Any]) -> str:
    """As the scheduler: write the inputs under `job-<task id>`; returns the key."""
    inputs = {"meta_param_dict": meta_param_dict, "adjustment": adjustment}
    return put_job_inputs(_block(), task_id, inputs, get_settings().redis.inputs_ttl_seconds)


def load_inputs(task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """As the executor: the inputs of this task only; LookupError if they expired or never came."""
    inputs = get_job_inputs(executor_config(), task_id)
    return inputs.get("meta_param_dict") or {}, inputs.get("adjustment") or {}
