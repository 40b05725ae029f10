"""The stack's own Redis for Prefect's messaging (prefect-redis), beside its PostgreSQL.

In-memory messaging lives inside one server process; with Redis, the server's
events, its cache and any further server replica or background-services
process share one broker (`PREFECT_MESSAGING_BROKER=prefect_redis.messaging`,
`PREFECT_MESSAGING_CACHE=prefect_redis.messaging`), as in production
(docs/production.md). It is a separate redis-server from the one holding job
inputs (`prefect-cs redis …`): different users, different lifetime.

Like the stack's PostgreSQL it listens on a unix socket only (mode 0700, no
TCP port) and requires a password kept 0600 in
`$CS_HOME/stack/redis-messaging-password`; the password reaches redis-server
through its 0600 config file and the Prefect server through its environment,
never a command line. Nothing is persisted: messages in flight are lost with
a restart, as with in-memory messaging.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

from prefect_cs.core.errors import NotConfigured
from prefect_cs.services.stack_login import private_secret
from prefect_cs.services.supervisor import Background, stack_dir, system_environment

BROKER = "prefect_redis.messaging"


def socket_file() -> Path:
    return stack_dir() / "redis-messaging.sock"


def password() -> str:
    return private_secret(stack_dir() / "redis-messaging-password")


def config_file() -> Path:
    """redis-server's config (0600, rewritten each start): the socket, the password, no
    persistence."""
    path = stack_dir() / "redis-messaging.conf"
    work = stack_dir() / "redis-messaging"
    work.mkdir(exist_ok=True)
    lines = [
        "port 0",
        f"unixsocket {socket_file()}",
        "unixsocketperm 700",
        f"requirepass {password()}",
        'save ""',
        "appendonly no",
        f"dir {work}",
    ]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def url() -> str:
    """prefect-redis's connection URL over the socket; holds the password."""
    return f"unix://{socket_file()}?db=0&password={quote(password(), safe='')}"


def server_environment() -> dict[str, str]:
    """The Prefect server's messaging settings; the server alone gets them."""
    return {
        "PREFECT_MESSAGING_BROKER": BROKER,
        "PREFECT_MESSAGING_CACHE": BROKER,
        "PREFECT_REDIS_MESSAGING_URL": url(),
    }


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise NotConfigured(
            "redis-server is not installed (Prefect's messaging on the PostgreSQL stack):"
            " apt-get install redis-server, or start the stack with CS_STACK_DATABASE=sqlite"
        )
    return path


def background() -> Background:
    """redis-server with its config file, in a minimal environment (nothing of the operator's)."""
    argv = [redis_server(), str(stack_dir() / "redis-messaging.conf")]
    return Background("redis-messaging", argv, system_environment())


def client():
    """A redis-py client over the socket, for readiness and for checks (the tests read its
    streams)."""
    import redis

    return redis.Redis(unix_socket_path=str(socket_file()), password=password(), socket_timeout=2)


def start(timeout: float = 20) -> str:
    """Write its config, start it and wait until it answers a PING; the report line."""
    config_file()
    bg = background()
    pid = bg.start_and_wait(_answers, timeout, poll=0.1, what="Redis for messaging")
    return f"{bg.name}: pid {pid}, socket {socket_file()} (unix only), log {bg.log_file}"


def _answers() -> bool:
    import redis

    try:
        return bool(client().ping())
    except redis.RedisError:
        return False


def stop() -> bool:
    return background().stop()
