"""`prefect-cs simulate` as an operator runs it: through the model's deployment on a real
process worker, against a real Prefect server and web app stand-in. A failed run stored no
zips, so the command must not name any."""

from __future__ import annotations

import json
import re

import pytest
from prefect_cs.cli.main import app
from prefect_cs.services.stack_parts import process_worker
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def worker(misbehaving):
    background = process_worker()
    background.start()
    yield background
    background.stop()


def simulate(behavior: str):
    adjustment = json.dumps({"control": {"behavior": [{"value": behavior}]}})
    argv = ["simulate", "tests/Misbehaving", "-a", adjustment, "--wait", "300"]
    return CliRunner().invoke(app, argv)


def task_of(output: str) -> str:
    """The task id the command printed: the web app's PUT for it is this run's (an earlier
    module's run left scheduled may be picked up by this worker and PUT here too)."""
    (task_id,) = re.findall(r"task ([0-9a-f-]{36})", output)
    return task_id


def test_failed_run_prints_no_zip_paths(worker, webapp):
    result = simulate("raise")
    assert result.exit_code == 1, result.output
    assert "Failed" in result.output
    assert ".zip" not in result.output and "outputs:" not in result.output
    assert webapp.only_put(task_of(result.output))["status"] == "FAIL"


def test_completed_run_prints_where_its_zips_are(worker, webapp, cs_home):
    result = simulate("ok")
    assert result.exit_code == 0, result.output
    body = webapp.only_put(task_of(result.output))
    assert body["status"] == "SUCCESS"
    for category in ("renderable", "downloadable"):
        location = body["outputs"][category]["ziplocation"]
        assert location in result.output
        assert (cs_home / "outputs" / location).is_file()
