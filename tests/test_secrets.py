"""Cluster and model secrets: both backends for real, the CLI, and no leak from a simulation."""

from __future__ import annotations

import json
import secrets
import uuid
import zipfile
from pathlib import Path

import pytest
from prefect_cs.cli.main import app
from prefect_cs.security.secrets import (
    GcpSecretsBackend,
    PrefectSecretsBackend,
    SecretNotFound,
    gcp_client,
    get_secrets_settings,
)
from prefect_cs.testing.secret_manager_standin import SecretManagerStandIn
from typer.testing import CliRunner

cli = CliRunner()


def invoke(*args: str, stdin: str | None = None):
    return cli.invoke(app, list(args), input=stdin)


# ---- the CLI on the Prefect backend (the default) ------------------------------


def test_cluster_secrets_set_get_list_delete(platform):
    value = "s3cr3t-" + secrets.token_hex(8)
    result = invoke("secrets", "set", "--name", "SMTP_PASSWORD", "--stdin", stdin=value + "\n")
    assert result.exit_code == 0, result.output
    assert value not in result.output

    result = invoke("secrets", "get", "SMTP_PASSWORD")
    assert result.exit_code == 0 and result.output == value + "\n"

    result = invoke("secrets", "list")
    assert result.exit_code == 0 and "SMTP_PASSWORD" in result.output
    assert value not in result.output

    assert invoke("secrets", "delete", "SMTP_PASSWORD").exit_code == 0
    result = invoke("secrets", "get", "SMTP_PASSWORD")
    assert result.exit_code == 1
    assert "not set for the cluster" in result.output


def test_model_secrets_are_their_own_scope(platform):
    value = secrets.token_hex(12)
    result = invoke(
        "models",
        "-n",
        "PSLmodels/Tax-Brain",
        "secrets",
        "set",
        "--name",
        "API_KEY",
        "--stdin",
        stdin=value,
    )
    assert result.exit_code == 0, result.output
    assert (
        invoke("models", "-n", "PSLmodels/Tax-Brain", "secrets", "get", "API_KEY").output
        == value + "\n"
    )
    assert "API_KEY" in invoke("models", "-n", "PSLmodels/Tax-Brain", "secrets", "list").output
    assert "API_KEY" not in invoke("models", "-n", "PSLmodels/Other", "secrets", "list").output
    assert "API_KEY" not in invoke("secrets", "list").output
    assert invoke("secrets", "get", "API_KEY").exit_code == 1
    assert (
        invoke("models", "-n", "PSLmodels/Tax-Brain", "secrets", "delete", "API_KEY").exit_code == 0
    )
    assert "API_KEY" not in invoke("models", "-n", "PSLmodels/Tax-Brain", "secrets", "list").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("secrets", "set", "--name", "bad name", "--value", "x"), "invalid secret name"),
        (("secrets", "set", "--name", "EMPTY", "--value", ""), "non-empty"),
        (("models", "-n", "bad owner/x", "secrets", "list"), "invalid owner"),
        (("models", "secrets", "list"), "models -n OWNER/TITLE"),
        (("secrets", "delete", "NEVER_SET"), "not set for the cluster"),
    ],
)
def test_bad_secret_commands_say_what_to_fix(platform, args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output, result.output


# ---- the Google Secret Manager backend, through its real client library ------------


@pytest.fixture
def secret_manager(monkeypatch):
    standin = SecretManagerStandIn().start()
    monkeypatch.setenv("CS_SECRETS_BACKEND", "gcp")
    monkeypatch.setenv("CS_GCP_PROJECT", "cs-test")
    monkeypatch.setenv("CS_GCP_SECRETS_ENDPOINT", standin.url)
    yield standin
    standin.stop()


def test_gcp_backend_set_get_list_delete(secret_manager):
    client = gcp_client(get_secrets_settings())
    cluster = GcpSecretsBackend(None, project="cs-test", client=client)
    model = GcpSecretsBackend("PSLmodels/Tax-Brain", project="cs-test", client=client)

    cluster.set("SHARED", "cluster-value")
    model.set("API_KEY", "first")
    model.set("API_KEY", "second")  # exists: a new version, not an error
    assert model.get("API_KEY") == "second"
    assert cluster.get("SHARED") == "cluster-value"
    assert cluster.list() == ["SHARED"] and model.list() == ["API_KEY"]
    assert secret_manager.stored_value(model.id_for("API_KEY"), "cs-test") == "second"

    model.delete("API_KEY")
    with pytest.raises(SecretNotFound, match="not set for model PSLmodels/Tax-Brain"):
        model.get("API_KEY")
    with pytest.raises(SecretNotFound):
        model.delete("API_KEY")
    assert ("POST", "/v1/projects/cs-test/secrets/" + model.id_for("API_KEY") + ":addVersion") in (
        secret_manager.calls()
    )


def test_gcp_backend_through_the_cli(secret_manager):
    assert invoke("secrets", "set", "--name", "TOKEN", "--stdin", stdin="gcp-value").exit_code == 0
    assert invoke("secrets", "get", "TOKEN").output == "gcp-value\n"
    assert "TOKEN" in invoke("secrets", "list").output
    assert any(path.startswith("/v1/projects/cs-test/") for _, path in secret_manager.calls())


def test_gcp_backend_unreachable_is_one_line(monkeypatch):
    monkeypatch.setenv("CS_SECRETS_BACKEND", "gcp")
    monkeypatch.setenv("CS_GCP_PROJECT", "cs-test")
    monkeypatch.setenv("CS_GCP_SECRETS_ENDPOINT", "http://127.0.0.1:9")
    result = invoke("secrets", "list")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "error:" in result.output


def test_prefect_backend_is_the_default(platform):
    from prefect_cs.security.secrets import get_backend

    assert isinstance(get_backend(None), PrefectSecretsBackend)


# ---- no leak: a simulation with a declared secret, every output grepped ----------


@pytest.fixture
def model_with_secret(misbehaving):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.security.secrets import get_backend

    value = "tok-" + secrets.token_hex(16)
    get_backend("tests/Misbehaving").set("DEMO_TOKEN", value)
    model = ModelConfig.for_model("tests", "Misbehaving")
    model.secrets = ["DEMO_TOKEN"]
    model.save_model()
    yield value
    model.secrets = []
    model.save_model()
    get_backend("tests/Misbehaving").delete("DEMO_TOKEN")


def everything_sent_or_kept(flow_run_ids: list, cs_home: Path, webapp) -> str:
    """Logs, artifacts, parameters and state messages of the runs, stored files, web app
    requests."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    parts = []
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            run = client.read_flow_run(run_id)
            parts.append(run.model_dump_json())
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            parts += [log.message for log in logs]
        parts += [a.model_dump_json() for a in client.read_artifacts(limit=200)]
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
        parts += [r.state.model_dump_json() for r in runs if r.state]
    for path in cs_home.rglob("*"):
        if path.is_file() and path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                parts += [archive.read(n).decode(errors="replace") for n in archive.namelist()]
        elif path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".txt"):
            parts.append(path.read_text(errors="replace"))
    parts += [json.dumps(r.body) for r in webapp.requests]
    return "\n".join(parts)


def wait_for_logs(run_ids: list, needle: str, timeout: float = 15) -> None:
    """API logs are batched: wait until the run's model output is in, so the grep sees it."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
            if any(needle in log.message for log in logs):
                return
            time.sleep(0.5)
    raise AssertionError(f"no log line with {needle!r} arrived")


def test_declared_secret_reaches_the_model_and_nothing_else(model_with_secret, webapp, cs_home):
    from prefect_cs.flows.simulate import simulate

    run_ids, task_ids = [], []
    for behavior in ("leak_secret", "leak_secret_raise"):
        task_id = str(uuid.uuid4())
        state = simulate(
            "tests",
            "Misbehaving",
            task_id,
            {},
            {"control": {"behavior": [{"value": behavior}]}},
            return_state=True,
        )
        run_ids.append(state.state_details.flow_run_id)
        task_ids.append(task_id)
    wait_for_logs(run_ids, "my token is ***")

    # The model did get the value (masked in what it sent back), so the grep below means something.
    ok = next(r.body for r in webapp.requests if r.body.get("task_id") == task_ids[0])
    assert ok["status"] == "SUCCESS"
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_ids[0]}_renderable.zip") as archive:
        assert "token: ***" in archive.read("Summary.md").decode()
    failed = next(r.body for r in webapp.requests if r.body.get("task_id") == task_ids[1])
    assert "cannot log in with token ***" in failed["traceback"]

    haystack = everything_sent_or_kept(run_ids, cs_home, webapp)
    assert haystack.count(model_with_secret) == 0


def test_missing_declared_secret_is_a_delivered_fail(misbehaving, webapp):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.flows.simulate import simulate

    model = ModelConfig.for_model("tests", "Misbehaving")
    model.secrets = ["NOT_SET_ANYWHERE"]
    model.save_model()
    try:
        task_id = str(uuid.uuid4())
        state = simulate("tests", "Misbehaving", task_id, {}, {}, return_state=True)
    finally:
        model.secrets = []
        model.save_model()
    assert state.is_failed()
    body = next(r.body for r in webapp.requests if r.body.get("task_id") == task_id)
    assert body["status"] == "FAIL"
    assert (
        "NOT_SET_ANYWHERE" in body["traceback"]
        and "secrets set --name NOT_SET_ANYWHERE" in body["traceback"]
    )
