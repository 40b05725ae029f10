"""The attacker's model on the Docker tier (issue 19): its install.sh, running as root in the
image build, plants a `.pth` and `sitecustomize.py` in every site-packages folder of the image
and writes /etc/ld.so.preload. Then a simulation, a warm inputs call and the publish itself
(its tests and get_version in the image) run. Each asserts that the attack ran (the planted
code ran in the model's own calls, and the files are in the image) and that it got nothing:
every probe blocked, the planted code never ran as the platform, no Prefect Variable written,
no loopback port, no registry, no API reached. Against the single-image design (the flow in the
model's image) the planted code ran in the flow and wrote the Variable.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import uuid

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.deployments.submit import submit_simulation
from prefect_cs.services.stack_parts import docker_worker
from prefect_cs.testing.docker_tier import docker_tier, ensure_docker, registry_settings
from prefect_cs.testing.models import EXAMPLES, add_tag, git, publish_model, register_model

from tests.test_attacks import (
    assert_got_nothing,
    attack_targets,
    delivered_report,
    no_grandchild_left,
)

TITLE = "Attacker-Docker"
VARIABLE = "pwned_by_planted_code"  # what planted.py writes when it holds an API login


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
    # The model's tests ran every probe in the image and assert they got nothing.
    assert state.is_completed(), state.message
    worker = docker_worker()
    worker.start()
    yield ModelConfig.for_model("tests", TITLE).published().image
    worker.stop()
    for key in settings:
        os.environ.pop(key, None)


def image_file(image: str, path: str) -> str:
    """A file of the image, read from a created (never started) container: nothing runs."""
    import docker

    container = docker.from_env().containers.create(image)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.getmembers()[0]
            return archive.extractfile(member).read().decode()
    finally:
        container.remove(force=True)


def assert_planted_code_ran_as_the_model_only(report: dict) -> None:
    planted = json.loads(report["probes"]["planted_code"]["detail"])
    assert planted["runs"] >= 1, "the planted .pth ran in the model's own call: the attack ran"
    assert planted["as_platform"] == []


def no_variable_written() -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_variable_by_name(VARIABLE) is None


def test_the_image_carries_the_planted_files(docker_attacker):
    assert "libcs-planted.so" in image_file(docker_attacker, "/etc/ld.so.preload")
    pth = "/opt/cs/model/lib/python3.11/site-packages/zz-cs-planted.pth"
    assert "planted.py" in image_file(docker_attacker, pth)
    assert no_variable_written(), "publish (tests, get_version in the image) ran nothing of it"


def test_run_model_in_a_container_gets_nothing(docker_attacker, webapp, cs_home):
    task_id = str(uuid.uuid4())
    targets = {"webapp": webapp.url}
    run = submit_simulation(
        "tests", TITLE, {"targets": targets}, {}, task_id=task_id, wait_seconds=180
    )
    assert run.state.is_completed(), run.state.message
    report = delivered_report(webapp, cs_home, task_id)
    assert_got_nothing(report, "run_model")
    assert report["probes"]["api_without_credentials"]["detail"].startswith("no route")
    assert report["probes"]["registry"]["detail"].startswith("no route")
    assert report["probes"]["loopback_scan"]["detail"] == "no port open"
    assert_planted_code_ran_as_the_model_only(report)
    assert no_variable_written()
    assert no_grandchild_left("run_model")
    accepted = webapp.accepted("/outputs/api/")
    assert not [r for r in accepted if "00000000-0000" in json.dumps(r.body)]  # forged: refused


def test_warm_inputs_container_gets_nothing(docker_attacker, task_worker):
    from prefect_cs.flows import inputs

    answer = inputs.get_defaults("tests", TITLE, {"fresh": uuid.uuid4().hex})
    assert answer["status"] == "SUCCESS", answer
    report = answer["model_parameters"]["attack"]
    assert_got_nothing(report, "get_inputs")
    assert_planted_code_ran_as_the_model_only(report)
    assert no_variable_written()
