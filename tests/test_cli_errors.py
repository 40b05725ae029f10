"""The CLI's one error path: the platform's own errors are one `error:` line naming the fix,
anything else is a bug and keeps its traceback (issue 20). Also: the options that default to a
CS_* setting read it through the settings tree and never show a secret in --help.

No Prefect server: each command here fails, or is stopped, before it would need one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import typer
from prefect_cs.cli._utilities import read_json
from prefect_cs.cli.main import app
from typer.testing import CliRunner


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def assert_one_error_line(result, *fragments: str) -> None:
    """Exit 1 after `exit_with_error`: a single `error:` line, no exception left over."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# ---- the platform's errors: one line ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("webhook", "cloud-template", "bad owner", "x"), ("invalid owner 'bad owner'", "e.g.")),
        (("pool", "no-such-pool-type"), ("unknown pool type", "process")),
        (("models", "usage", "a/b", "--since", "yesterday"), ("is not a date", "YYYY-MM-DD")),
        (("simulate", "a/b", "-a", "no-such-file.json"), ("neither inline JSON nor a readable",)),
    ],
)
def test_a_project_error_is_one_error_line(args, fragments):
    assert_one_error_line(invoke(*args), *fragments)


def test_an_unreachable_redis_is_one_line_naming_where():
    """redis-py's ConnectionError becomes the platform's AclError (no catch-all in the CLI)."""
    passwords = {
        f"CS_REDIS_{role}_PASSWORD": f"{role.lower()}-password-0123456789"
        for role in ("ADMIN", "SCHEDULER", "EXECUTOR")
    }
    result = invoke("redis", "init-acl", "--port", "9", env=passwords)
    assert_one_error_line(result, "cannot reach Redis at 127.0.0.1:9", "--host/--port")
    assert not any(value in result.output for value in passwords.values())


# ---- anything else: a bug, with its traceback -----------------------------------------


@pytest.mark.parametrize("bug", [KeyError("x"), ValueError("bare"), LookupError("y")])
def test_a_bug_inside_a_command_is_not_turned_into_an_error_line(monkeypatch, bug):
    """A KeyError or a bare ValueError from the platform's code is a bug: the old mapping of
    every LookupError and ValueError printed `error: 'x'` and hid where it was raised."""
    import prefect_cs.services.lost_runs as lost_runs

    def broken(*_: object) -> None:
        raise bug

    monkeypatch.setattr(lost_runs, "scan_once", broken)
    result = invoke("watch", "--once")
    assert result.exception is bug
    assert "error:" not in result.output


def test_a_bug_prints_its_traceback_and_the_command_exits_non_zero(tmp_path):
    """The real entry point (typer's own handler): a traceback naming the raise, no `error:`."""
    script = textwrap.dedent(
        """
        import prefect_cs.services.lost_runs as lost_runs

        def scan_once(*_):
            return {}["planted-key"]

        lost_runs.scan_once = scan_once
        from prefect_cs.cli.main import app

        app(["watch", "--once"], prog_name="prefect-cs")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "KeyError" in done.stderr, done.stderr
    assert "error: 'planted-key'" not in done.stderr + done.stdout


# ---- CS_* defaults through the settings tree, secrets never shown -------------------------


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (("webapp", "set", "--help"), "CS_WEBAPP_TOKEN"),
        (("redis", "init-acl", "--help"), "CS_REDIS_INITIAL_PASSWORD"),
    ],
)
def test_help_never_shows_a_secret_setting(args, variable):
    result = invoke(*args, env={variable: "planted-secret-value"})
    assert result.exit_code == 0, result.output
    assert "planted-secret-value" not in result.output
    assert variable in result.output  # the help names where the value comes from


def test_webapp_set_takes_the_token_from_the_settings_tree(monkeypatch):
    from prefect_cs.blocks.webapp import WebApp

    saved = {}

    def save(self: WebApp, name: str, overwrite: bool = False) -> None:
        saved[name] = (self.base_url, self.token.get_secret_value())

    monkeypatch.setattr(WebApp, "save", save)
    result = invoke(
        "webapp", "set", "--url", "https://webapp.test", env={"CS_WEBAPP_TOKEN": "tok-123"}
    )
    assert result.exit_code == 0, result.output
    assert saved == {"default": ("https://webapp.test", "tok-123")}
    assert "tok-123" not in result.output
    assert_one_error_line(invoke("webapp", "set", "--url", "https://x.test"), "CS_WEBAPP_TOKEN")


def test_inputs_serve_takes_its_model_from_the_settings_tree(monkeypatch):
    import prefect_cs.services.inputs_server as inputs_server

    served = []
    monkeypatch.setattr(inputs_server, "serve", served.append)
    result = invoke("inputs", "serve", env={"CS_INPUTS_MODEL": "PSLmodels/Tax-Brain"})
    assert result.exit_code == 0, result.output
    assert served == ["PSLmodels/Tax-Brain"]
    bad = invoke("inputs", "serve", env={"CS_INPUTS_MODEL": "bad owner/x"})
    assert_one_error_line(bad, "invalid owner 'bad owner'")
    assert served == ["PSLmodels/Tax-Brain"]


# ---- adjustments inline or from a file ------------------------------------------------------


def test_read_json_takes_inline_json_longer_than_a_file_name(tmp_path):
    """An inline adjustment is never tried as a path: past 255 bytes that check raised
    OSError 'File name too long' (a traceback for `simulate -a '{…}'`)."""
    long = {"policy": {"rate": [{"value": 0.1}] * 40}}
    assert read_json(json.dumps(long)) == long
    path = tmp_path / "adjustment.json"
    path.write_text(json.dumps(long))
    assert read_json(str(path)) == long
    with pytest.raises(typer.Exit):
        read_json(str(tmp_path / "missing.json"))
