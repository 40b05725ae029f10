"""The `cs-redis` block: where the platform's Redis is and its three users' passwords.

A block (not settings) because the passwords are secrets the CLI saves once and
every submitter loads; a model job gets only the executor password, from its
environment (see `from_env`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import redis
from prefect.blocks.core import Block
from prefect_cs.core.errors import AclError
from pydantic import Field, SecretStr, field_validator, model_validator
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

Role = Literal["admin", "scheduler", "executor"]
ROLES: tuple[Role, ...] = ("admin", "scheduler", "executor")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RedisConfig(Block):
    """Where the platform's Redis is and the passwords of its three users."""

    _block_type_name = "CS Redis"
    _block_type_slug = "cs-redis"
    _description = "Redis for job inputs: admin, scheduler and executor users (ACL)."

    url: str | None = Field(
        default=None,
        description="redis:// or rediss:// URL without credentials; overrides host, port and db.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=6379, gt=0, lt=65536)
    db: int = Field(default=0, ge=0)
    admin_username: str = "cs-admin"
    admin_password: SecretStr | None = None
    scheduler_username: str = "scheduler"
    scheduler_password: SecretStr | None = None
    executor_username: str = "executor"
    executor_password: SecretStr | None = None

    @field_validator("admin_username", "scheduler_username", "executor_username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not USERNAME_RE.match(value) or value == "default":
            raise ValueError(
                f"invalid Redis username {value!r}: letters, digits, '_' and '-', and not 'default'"
            )
        return value

    @model_validator(mode="after")
    def _distinct(self) -> RedisConfig:
        names = [self.username(role) for role in ROLES]
        if len(set(names)) != len(names):
            raise ValueError(f"the admin, scheduler and executor usernames must differ: {names}")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> RedisConfig:
        """CS_REDIS_URL / _HOST / _PORT / _DB and CS_REDIS_<ROLE>_USERNAME / _PASSWORD
        (core/settings.py `RedisSettings`); what is not set keeps the block's default.

        A model job builds its config this way with only CS_REDIS_EXECUTOR_PASSWORD set.
        """
        from prefect_cs.core.settings import get_settings

        settings = get_settings().redis
        fields = ["url", "host", "port", "db"] + [
            f"{role}_{part}" for role in ROLES for part in ("username", "password")
        ]
        values = {f: getattr(settings, f) for f in fields if getattr(settings, f) is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def username(self, role: Role) -> str:
        return getattr(self, f"{role}_username")

    def password(self, role: Role) -> str:
        secret: SecretStr | None = getattr(self, f"{role}_password")
        if secret is None or not secret.get_secret_value():
            raise AclError(
                f"no {role} password: set it in the cs-redis block or"
                f" CS_REDIS_{role.upper()}_PASSWORD"
            )
        return secret.get_secret_value()

    def connect(self, username: str | None, password: str | None, retries: int = 3) -> redis.Redis:
        """A client for any user (None/None: unauthenticated, i.e. the `default` user).

        redis-py retries AuthenticationError like a dropped connection, with
        backoff; probing logins (init_acl, tests) pass retries=0 to fail at once.
        """
        retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2), retries)
        options: dict[str, Any] = dict(
            username=username,
            password=password,
            socket_connect_timeout=5,
            socket_timeout=60,
            retry=retry,
        )
        if self.url:
            return redis.Redis.from_url(self.url, **options)
        return redis.Redis(host=self.host, port=self.port, db=self.db, **options)

    def client(self, role: Role) -> redis.Redis:
        """A client authenticated as one of the platform's users."""
        return self.connect(self.username(role), self.password(role))
