"""Redis users with least privilege, and the job inputs handoff through them.

The scheduler writes a job's inputs to `job-<task id>`; the model job, holding
only the executor password, reads them back. The executor may run GET on
`job-*` and nothing else, and task ids are UUIDs, so a job can read only the
inputs whose id it was given. The `default` user is disabled.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any, Literal, NamedTuple

import redis
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

Role = Literal["admin", "scheduler", "executor"]
ROLES: tuple[Role, ...] = ("admin", "scheduler", "executor")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MIN_PASSWORD_LENGTH = 16

# ACL SETUSER rules after `reset` (which clears passwords, keys, channels and commands
# and turns the user off), so running them again always gives the same user.
RULES: dict[Role, list[str]] = {
    "admin": ["~*", "&*", "+@all"],
    "scheduler": ["~job-*", "~projects*", "resetchannels", "-@all", "+get", "+set", "+expire"],
    "executor": ["~job-*", "resetchannels", "-@all", "+get"],
}


class AclResult(NamedTuple):
    """What init_acl left: each user's rules (no password hashes) and where it was persisted."""

    users: dict[str, str]
    persisted: str


class AclError(RuntimeError):
    """init_acl could not connect or was refused; the message names the fix."""


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
        """CS_REDIS_URL / _HOST / _PORT / _DB and CS_REDIS_<ROLE>_USERNAME / _PASSWORD.

        A model job builds its config this way with only CS_REDIS_EXECUTOR_PASSWORD set.
        """
        fields = ["url", "host", "port", "db"] + [
            f"{role}_{part}" for role in ROLES for part in ("username", "password")
        ]
        values = {
            f: os.environ[f"CS_REDIS_{f.upper()}"]
            for f in fields
            if f"CS_REDIS_{f.upper()}" in os.environ
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def username(self, role: Role) -> str:
        return getattr(self, f"{role}_username")

    def password(self, role: Role) -> str:
        secret: SecretStr | None = getattr(self, f"{role}_password")
        if secret is None or not secret.get_secret_value():
            raise AclError(
                f"no {role} password: set it in the cs-redis block or CS_REDIS_{role.upper()}_PASSWORD"
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


# ---- ACL setup ----------------------------------------------------------------------


def check_passwords(config: RedisConfig) -> None:
    """Every role needs its own long password before users are created."""
    passwords = [config.password(role) for role in ROLES]
    for role, password in zip(ROLES, passwords, strict=True):
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AclError(
                f"the {role} password must have at least {MIN_PASSWORD_LENGTH} characters"
            )
    if len(set(passwords)) != len(passwords):
        raise AclError("the admin, scheduler and executor passwords must differ")


def setuser(conn: redis.Redis, username: str, password: str, rules: list[str]) -> None:
    conn.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}", *rules)


def bootstrap(
    config: RedisConfig, initial_username: str | None, initial_password: str | None
) -> redis.Redis:
    """Connect as our admin if it exists already (a rerun), else as the server's initial user."""
    attempts = [
        (config.username("admin"), config.password("admin")),
        (initial_username if initial_password else None, initial_password),
    ]
    for username, password in attempts:
        conn = config.connect(username, password, retries=0)
        try:
            conn.execute_command("ACL", "WHOAMI")
            return conn
        except redis.AuthenticationError:
            conn.close()
        except redis.ResponseError as exc:
            conn.close()
            raise AclError(f"user {username or 'default'} may not manage ACLs: {exc}") from exc
    raise AclError(
        "cannot log in to Redis as the admin user nor as the initial user: give the server's"
        " current password with --initial-password (or CS_REDIS_INITIAL_PASSWORD)"
    )


def persist(admin: redis.Redis) -> str:
    """ACL SAVE to the server's ACL file, else CONFIG REWRITE; say which, or that neither exists."""
    try:
        admin.execute_command("ACL", "SAVE")
        return "saved to the server's ACL file"
    except redis.ResponseError:
        pass
    try:
        admin.execute_command("CONFIG", "REWRITE")
        return "written to the server's config file"
    except redis.ResponseError:
        return "NOT persisted: the server has neither an ACL file nor a config file; run init-acl again after a restart"


def init_acl(
    config: RedisConfig,
    initial_username: str | None = "default",
    initial_password: str | None = None,
) -> AclResult:
    """Create or update the admin, scheduler and executor users and disable `default`.

    The admin is created first and a fresh connection proves its password works
    before anything else changes, so a failure never locks the operator out.
    Idempotent: a second run leaves ACL LIST unchanged.
    """
    check_passwords(config)
    with bootstrap(config, initial_username, initial_password) as conn:
        setuser(conn, config.username("admin"), config.password("admin"), RULES["admin"])
    with config.client("admin") as admin:
        admin.execute_command("ACL", "WHOAMI")
        for role in ("scheduler", "executor"):
            setuser(admin, config.username(role), config.password(role), RULES[role])
        admin.execute_command("ACL", "SETUSER", "default", "reset")
        where = persist(admin)
        return AclResult(acl_rules(admin), where)


def acl_rules(admin: redis.Redis) -> dict[str, str]:
    """ACL LIST as {user: rules}, with password hashes removed, for display."""
    rules = {}
    for line in admin.acl_list():
        _, user, *tokens = line.split()
        rules[user] = " ".join(t for t in tokens if not t.startswith(("#", ">", "<", "!")))
    return rules


# ---- job inputs handoff ---------------------------------------------------------------


def job_key(task_id: str) -> str:
    """`job-<uuid>`, canonical form: ids are UUIDs so no job can guess another's key."""
    try:
        parsed = uuid.UUID(str(task_id))
    except ValueError:
        raise ValueError(f"invalid task id {task_id!r}: expected a UUID") from None
    if str(parsed) != str(task_id).lower():
        raise ValueError(f"invalid task id {task_id!r}: expected a UUID like {parsed}")
    return f"job-{parsed}"


def put_job_inputs(
    config: RedisConfig, task_id: str, inputs: dict[str, Any], ttl_seconds: int
) -> str:
    """As the scheduler: write the inputs as JSON to `job-<task_id>`, expiring after ttl_seconds."""
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive: inputs must not outlive their job")
    key = job_key(task_id)
    with config.client("scheduler") as conn:
        conn.set(key, json.dumps(inputs), ex=ttl_seconds)
    return key


def get_job_inputs(config: RedisConfig, task_id: str) -> dict[str, Any]:
    """As the executor: read the inputs of one job; LookupError if expired or never written."""
    key = job_key(task_id)
    with config.client("executor") as conn:
        data = conn.get(key)
    if data is None:
        raise LookupError(f"no inputs for task {task_id} (expired or never written)")
    return json.loads(data)
