"""Redis least privilege against a real redis-server: what each user may and may not do.

`python -m tests.test_redis_acl` prints the whole (user, command, result) matrix.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import pytest
import redis
from prefect_cs.cli.redis import redis_app
from prefect_cs.security.redis_acl import (
    AclError,
    RedisConfig,
    get_job_inputs,
    init_acl,
    job_key,
    put_job_inputs,
)
from prefect_cs.testing.redis_server import RedisServer, make_config
from pydantic import SecretStr
from typer.testing import CliRunner

TASK_ID = "0b7c6a52-55d4-4a8e-9a55-0a3c8e9e2f10"
JOB = f"job-{TASK_ID}"
SEEDED = {JOB: "job inputs", "projects-x": "projects", "other-key": "other"}

# (user, command, expected result): OK, NOPERM (refused by the ACL) or NOAUTH (not logged in).
CASES: list[tuple[str, tuple[str, ...], str]] = [
    ("executor", ("GET", JOB), "OK"),
    ("executor", ("SET", JOB, "x"), "NOPERM"),
    ("executor", ("SET", JOB, "x", "EX", "60"), "NOPERM"),
    ("executor", ("DEL", JOB), "NOPERM"),
    ("executor", ("GETDEL", JOB), "NOPERM"),
    ("executor", ("EXPIRE", JOB, "1"), "NOPERM"),
    ("executor", ("DUMP", JOB), "NOPERM"),
    ("executor", ("MGET", JOB), "NOPERM"),
    ("executor", ("GET", "projects-x"), "NOPERM"),
    ("executor", ("GET", "other-key"), "NOPERM"),
    ("executor", ("KEYS", "*"), "NOPERM"),
    ("executor", ("SCAN", "0"), "NOPERM"),
    ("executor", ("FLUSHALL",), "NOPERM"),
    ("executor", ("FLUSHDB",), "NOPERM"),
    ("executor", ("CONFIG", "GET", "*"), "NOPERM"),
    ("executor", ("CONFIG", "SET", "maxmemory", "1"), "NOPERM"),
    ("executor", ("ACL", "LIST"), "NOPERM"),
    ("executor", ("ACL", "SETUSER", "executor", "+@all"), "NOPERM"),
    ("executor", ("EVAL", "return redis.call('set', KEYS[1], 'x')", "1", JOB), "NOPERM"),
    ("executor", ("FUNCTION", "LIST"), "NOPERM"),
    ("executor", ("SCRIPT", "LOAD", "return 1"), "NOPERM"),
    ("executor", ("PUBLISH", "channel", "x"), "NOPERM"),
    ("executor", ("CLIENT", "LIST"), "NOPERM"),
    ("executor", ("INFO",), "NOPERM"),
    ("executor", ("SELECT", "1"), "NOPERM"),
    ("executor", ("MULTI",), "NOPERM"),
    ("executor", ("OBJECT", "ENCODING", JOB), "NOPERM"),
    ("executor", ("SAVE",), "NOPERM"),
    ("executor", ("SHUTDOWN", "NOSAVE"), "NOPERM"),
    ("scheduler", ("GET", JOB), "OK"),
    ("scheduler", ("SET", JOB, "job inputs"), "OK"),
    ("scheduler", ("SET", JOB, "job inputs", "EX", "600"), "OK"),
    ("scheduler", ("EXPIRE", JOB, "600"), "OK"),
    ("scheduler", ("GET", "projects-x"), "OK"),
    ("scheduler", ("SET", "projects-x", "projects"), "OK"),
    ("scheduler", ("SET", "projects", "{}"), "OK"),
    ("scheduler", ("GET", "other-key"), "NOPERM"),
    ("scheduler", ("SET", "other-key", "x"), "NOPERM"),
    ("scheduler", ("DEL", JOB), "NOPERM"),
    ("scheduler", ("KEYS", "*"), "NOPERM"),
    ("scheduler", ("FLUSHALL",), "NOPERM"),
    ("scheduler", ("CONFIG", "GET", "*"), "NOPERM"),
    ("scheduler", ("ACL", "LIST"), "NOPERM"),
    ("scheduler", ("ACL", "SETUSER", "scheduler", "+@all"), "NOPERM"),
    ("scheduler", ("EVAL", "return 1", "0"), "NOPERM"),
    ("scheduler", ("SHUTDOWN", "NOSAVE"), "NOPERM"),
    ("default", ("PING",), "NOAUTH"),
    ("default", ("GET", JOB), "NOAUTH"),
    ("default", ("FLUSHALL",), "NOAUTH"),
    ("admin", ("ACL", "WHOAMI"), "OK"),
    ("admin", ("GET", "other-key"), "OK"),
]


def connect(config: RedisConfig, user: str) -> redis.Redis:
    """A client as one of the roles, or unauthenticated for `default`."""
    if user == "default":
        return config.connect(None, None, retries=0)
    return config.client(user)


def attempt(conn: redis.Redis, command: tuple[str, ...]) -> str:
    try:
        conn.execute_command(*command)
        return "OK"
    except redis.exceptions.NoPermissionError:
        return "NOPERM"
    except redis.AuthenticationError:
        return "NOAUTH"
    except redis.ResponseError as exc:
        return f"ERR {exc}"


def matrix(config: RedisConfig) -> list[tuple[str, str, str, str]]:
    """(user, command, expected, actual) for every case, on fresh connections."""
    rows = []
    for user, command, expected in CASES:
        with connect(config, user) as conn:
            rows.append((user, " ".join(command), expected, attempt(conn, command)))
    return rows


def format_matrix(rows: list[tuple[str, str, str, str]]) -> str:
    width = max(len(r[1]) for r in rows)
    return "\n".join(f"{u:<9} {c:<{width}}  {actual}" for u, c, _, actual in rows)


def seed(config: RedisConfig) -> None:
    with config.client("admin") as admin:
        for key, value in SEEDED.items():
            admin.set(key, value)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    """One real redis-server with the platform's ACL applied and a few keys seeded."""
    with RedisServer(tmp_path_factory.mktemp("redis-acl")) as server:
        config = make_config(server.port)
        init_acl(config)
        seed(config)
        yield server, config


@pytest.fixture
def fresh_server(tmp_path):
    """A redis-server as installed: `default` user on, no password."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def acl(acl_server) -> RedisConfig:
    return acl_server[1]


@pytest.mark.parametrize(
    ("user", "command", "expected"),
    CASES,
    ids=[f"{u}-{'-'.join(c[:2])}" for u, c, _ in CASES],
)
def test_acl_case(acl, user, command, expected):
    with connect(acl, user) as conn:
        assert attempt(conn, command) == expected
    seed(acl)  # keep the scheduler's writes from affecting later cases


def test_acl_matrix_is_printable(acl, capsys):
    rows = matrix(acl)
    seed(acl)
    print(format_matrix(rows))
    assert len(rows) == len(CASES)
    assert [r[3] for r in rows] == [r[2] for r in rows], format_matrix(rows)
    assert f"GET {JOB}" in capsys.readouterr().out


def test_executor_reads_its_own_job_inputs(acl):
    with acl.client("executor") as executor:
        assert executor.get(JOB) == b"job inputs"


def test_default_user_is_disabled(acl):
    with pytest.raises(redis.AuthenticationError):
        acl.connect(None, None, retries=0).ping()
    with pytest.raises(redis.AuthenticationError):
        acl.connect("default", "anything", retries=0).ping()
    with acl.client("admin") as admin:
        default = next(line for line in admin.acl_list() if line.startswith("user default "))
    assert default.split()[2] == "off", default
    assert "+@all" not in default and "~*" not in default, default


def test_init_acl_is_idempotent(acl):
    with acl.client("admin") as admin:
        before = admin.acl_list()
        result = init_acl(acl)
        after = admin.acl_list()
    assert after == before
    assert set(result.users) == {"cs-admin", "scheduler", "executor", "default"}
    executor = result.users["executor"].replace("sanitize-payload ", "")  # a Redis 7 flag
    assert executor == "on ~job-* resetchannels -@all +get", result.users
    assert not any("#" in rules or ">" in rules for rules in result.users.values()), result.users


def test_five_megabyte_inputs_round_trip(acl):
    task_id = str(uuid.uuid4())
    inputs = {
        "meta_param_dict": {"year": 2026},
        "adjustment": {"policy": {"rate": [{"value": 0.1, "i": i} for i in range(20)]}},
        "blob": secrets.token_hex(2_500_000),  # 5 MB of text
    }
    key = put_job_inputs(acl, task_id, inputs, ttl_seconds=300)
    assert key == f"job-{task_id}"
    assert get_job_inputs(acl, task_id) == inputs
    with acl.client("admin") as admin:
        assert 0 < admin.ttl(key) <= 300
        assert admin.strlen(key) > 5_000_000


def test_inputs_expire(acl):
    task_id = str(uuid.uuid4())
    put_job_inputs(acl, task_id, {"a": 1}, ttl_seconds=1)
    assert get_job_inputs(acl, task_id) == {"a": 1}
    time.sleep(1.2)
    with pytest.raises(LookupError, match="expired or never written"):
        get_job_inputs(acl, task_id)


@pytest.mark.parametrize(
    "task_id", ["*", "projects", "../x", "job-1", "", "0b7c6a5255d44a8e9a550a3c8e9e2f10"]
)
def test_task_ids_must_be_uuids(acl, task_id):
    with pytest.raises(ValueError, match="expected a UUID"):
        put_job_inputs(acl, task_id, {"a": 1}, ttl_seconds=10)
    with pytest.raises(ValueError, match="expected a UUID"):
        get_job_inputs(acl, task_id)


def test_job_key_is_canonical():
    assert job_key(TASK_ID.upper()) == JOB


def test_ttl_must_be_positive(acl):
    with pytest.raises(ValueError, match="ttl_seconds"):
        put_job_inputs(acl, str(uuid.uuid4()), {}, ttl_seconds=0)


def test_short_or_shared_passwords_are_refused(fresh_server):
    config = make_config(fresh_server.port)
    short = config.model_copy(update={"executor_password": SecretStr("short")})
    with pytest.raises(AclError, match="executor password must have at least 16"):
        init_acl(short)
    shared = config.model_copy(update={"scheduler_password": config.admin_password})
    with pytest.raises(AclError, match="must differ"):
        init_acl(shared)
    with redis.Redis(port=fresh_server.port) as conn:
        assert conn.acl_users() == ["default"]  # nothing was changed


def test_initial_password_is_used_and_required(fresh_server):
    initial = secrets.token_urlsafe(16)
    with redis.Redis(port=fresh_server.port) as conn:
        conn.execute_command("ACL", "SETUSER", "default", "resetpass", f">{initial}")
    config = make_config(fresh_server.port)
    with pytest.raises(AclError, match="--initial-password"):
        init_acl(config)
    result = init_acl(config, initial_password=initial)
    assert result.users["default"].startswith("off")
    with pytest.raises(redis.AuthenticationError):
        config.connect("default", initial, retries=0).ping()


def test_acl_survives_a_restart_with_an_acl_file(tmp_path):
    with RedisServer(tmp_path / "redis", aclfile=True) as server:
        config = make_config(server.port)
        assert init_acl(config).persisted == "saved to the server's ACL file"
        server.restart()
        with pytest.raises(redis.AuthenticationError):
            config.connect(None, None, retries=0).ping()
        with config.client("executor") as executor:
            assert executor.get(JOB) is None  # logged in; the data itself was not saved
            assert attempt(executor, ("SET", JOB, "x")) == "NOPERM"


def test_without_acl_file_the_result_says_not_persisted(fresh_server):
    assert init_acl(make_config(fresh_server.port)).persisted.startswith("NOT persisted")


# ---- the command line ------------------------------------------------------------------


def cli_env(config: RedisConfig) -> dict[str, str]:
    return {
        "COLUMNS": "200",
        **{
            f"CS_REDIS_{r.upper()}_PASSWORD": config.password(r)
            for r in ("admin", "scheduler", "executor")
        },
    }


def test_cli_init_acl_from_options_and_env(fresh_server, monkeypatch):
    from prefect_cs.cli._utilities import console

    monkeypatch.setattr(console, "width", 200)  # one table row per line, whatever the terminal
    config = make_config(fresh_server.port)
    runner = CliRunner()
    args = ["init-acl", "--host", "127.0.0.1", "--port", str(fresh_server.port)]
    first = runner.invoke(redis_app, args, env=cli_env(config))
    assert first.exit_code == 0, first.output
    second = runner.invoke(redis_app, args, env=cli_env(config))
    assert second.exit_code == 0, second.output
    assert second.output == first.output
    for user in ("cs-admin", "scheduler", "executor", "default"):
        assert user in first.output
    rows = {
        line.split()[1]: set(line.split()[3:-1]) - {"sanitize-payload"}
        for line in first.output.splitlines()
        if line.startswith("│")
    }
    # Redis orders the commands of a rule as it likes: compare sets (without Redis 7's flag).
    assert rows["scheduler"] == set(
        "on ~job-* ~projects* resetchannels -@all +set +expire +get".split()
    ), rows
    assert rows["executor"] == set("on ~job-* resetchannels -@all +get".split()), rows
    assert "NOT persisted" in first.output
    for role in ("admin", "scheduler", "executor"):
        assert config.password(role) not in first.output
    assert "#" not in first.output  # no password hashes either
    with pytest.raises(redis.AuthenticationError):
        config.connect(None, None, retries=0).ping()


def test_cli_wrong_initial_password_is_one_line(fresh_server):
    with redis.Redis(port=fresh_server.port) as conn:
        conn.execute_command("ACL", "SETUSER", "default", "resetpass", ">the-real-password")
    config = make_config(fresh_server.port)
    result = CliRunner().invoke(
        redis_app,
        ["init-acl", "--port", str(fresh_server.port)],
        env={**cli_env(config), "CS_REDIS_INITIAL_PASSWORD": "not-the-password"},
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert "--initial-password" in result.output


def test_cli_missing_passwords_is_one_line(fresh_server):
    result = CliRunner().invoke(
        redis_app, ["init-acl", "--port", str(fresh_server.port)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert "no admin password" in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_cli_init_acl_from_a_saved_block(prefect_server, fresh_server):
    config = make_config(fresh_server.port)
    config.save("acl-test", overwrite=True, _sync=True)
    result = CliRunner().invoke(
        redis_app, ["init-acl", "--block", "acl-test"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "executor" in result.output
    with config.client("executor") as executor:
        assert executor.get(JOB) is None


def test_cli_missing_block_is_one_line(prefect_server):
    result = CliRunner().invoke(redis_app, ["init-acl", "--block", "no-such-block"])
    assert result.exit_code == 1
    assert "no-such-block" in result.output
    assert "Traceback" not in result.output


if __name__ == "__main__":
    import tempfile

    with RedisServer(Path(tempfile.mkdtemp(prefix="redis-acl-"))) as server:
        config = make_config(server.port)
        init_acl(config)
        seed(config)
        rows = matrix(config)
        print(format_matrix(rows))
        wrong = [r for r in rows if r[2] != r[3]]
        print(f"\n{len(rows)} cases, {len(wrong)} unexpected")
