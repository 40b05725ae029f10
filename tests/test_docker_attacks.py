"""The attacker's model on the Docker tier: published as an image, simulated in a container the
real Docker worker starts. Every probe runs and gets nothing (the Prefect API and the web app
are reachable on host networking there, and answer 401), and its grandchild is gone after.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from prefect_cs.deployments.submit import submit_simulation
from prefect_cs.services.stack import docker_worker
from prefect_cs.testing.docker_tier import docker_tier, ensure_docker, registry_settings
from prefect_cs.testing.models import EXAMPLES, add_tag, git, publish_model, register_model

from tests.test_attacks import (
    assert_got_nothing,
    attack_targets,
    delivered_report,
    no_grandchild_left,
)

TITLE = "Attacker-Docker"


@pytest.fixture(scope="module")
def docker_attacker(platform, repos, cs_home):
    ensure_docker()
    settings = registry_settings()
    os.environ.update(settings)
    repo = repos / f"attacker-docker-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLES / "attacker-app", repo)
    targets = attack_targets(cs_home)
    (repo / "cs-config" / "cs_config" / "targets.json").write_text(json.dumps(targets))
    git(repo, "init", "-q")
    add_tag(repo, "v1", "attacker")
    register_model("tests", TITLE, repo, repo_tag="v1", time_limit=60)
    with docker_tier():
        state = publish_model("tests", TITLE)
    assert state.is_completed(), state.message
    worker = docker_worker()
    worker.start()
    yield
    worker.stop()
    for key in settings:
        os.environ.pop(key, None)


def test_run_model_in_a_container_gets_nothing(docker_attacker, webapp, cs_home):
    task_id = str(uuid.uuid4())
    targets = {"webapp": webapp.url}
    run = submit_simulation(
        "tests", TITLE, {"targets": targets}, {}, task_id=task_id, wait_seconds=180
    )
    assert run.state.is_completed(), run.state.message
    report = delivered_report(webapp, cs_home, task_id)
    assert_got_nothing(report, "run_model")
    assert report["probes"]["api_without_credentials"]["detail"] == "HTTP 401"
    assert no_grandchild_left("run_model")
    accepted = webapp.accepted("/outputs/api/")
    assert not [r for r in accepted if "00000000-0000" in json.dumps(r.body)]  # forged: refused
