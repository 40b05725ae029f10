"""Redis users with least privilege, and the job inputs handoff through them.

The scheduler writes a job's inputs to `job-<task id>`; the model job, holding
only the executor password, reads them back. The executor may run GET on
`job-*` and nothing else, and task ids are UUIDs, so a job can read only the
inputs whose id it was given. The `default` user is disabled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis
from prefect_cs.blocks.redis import ROLES, RedisConfig, Role
from prefect_cs.core.errors import AclError, InvalidValue, NotFound

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
        return (
            "NOT persisted: the server has neither an ACL file nor a config file; run init-acl"
            " again after a restart"
        )


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
    with redis_failures(config):
        with bootstrap(config, initial_username, initial_password) as conn:
            setuser(conn, config.username("admin"), config.password("admin"), RULES["admin"])
        with config.client("admin") as admin:
            admin.execute_command("ACL", "WHOAMI")
            for role in ("scheduler", "executor"):
                setuser(admin, config.username(role), config.password(role), RULES[role])
            admin.execute_command("ACL", "SETUSER", "default", "reset")
            where = persist(admin)
            return AclResult(acl_rules(admin), where)


def server_of(config: RedisConfig) -> str:
    """Where the config points, for messages (a URL is not shown: it may carry a password)."""
    return "the server of the Redis URL" if config.url else f"{config.host}:{config.port}"


@contextmanager
def redis_failures(config: RedisConfig) -> Iterator[None]:
    """Redis's own errors as an AclError naming the fix, so `redis init-acl` (run by setup
    scripts) ends in one line. A refusal's text is left out: ACL SETUSER echoes its rules,
    and one of them is the password (`>…`)."""
    try:
        yield
    except redis.AuthenticationError as exc:  # a ConnectionError to redis-py: test it first
        raise AclError(
            f"Redis at {server_of(config)} refused the login ({exc}): check the passwords in the"
            " block or CS_REDIS_<ROLE>_PASSWORD, and --initial-password (or"
            " CS_REDIS_INITIAL_PASSWORD)"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or ["no answer"])[0]
        raise AclError(
            f"cannot reach Redis at {server_of(config)} ({type(exc).__name__}: {first}):"
            " start it, or give the address of a running one (--host/--port, --url or the block)"
        ) from None
    except redis.RedisError as exc:
        raise AclError(
            f"Redis at {server_of(config)} refused the ACL setup ({type(exc).__name__}): check"
            " that the initial user may run ACL SETUSER and that the server's ACL is not"
            " managed elsewhere (its log says why)"
        ) from None


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
        raise InvalidValue(f"invalid task id {task_id!r}: expected a UUID") from None
    if str(parsed) != str(task_id).lower():
        raise InvalidValue(f"invalid task id {task_id!r}: expected a UUID like {parsed}")
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
        raise NotFound(f"no inputs for task {task_id} (expired or never written)")
    return json.loads(data)
