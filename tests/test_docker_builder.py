"""The Docker tier's names, context and errors (no engine needed; the end to end is in
test_docker_tier)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import StepFailed
from prefect_cs.core.names import image_tag
from prefect_cs.testing.model_code import model_python, script_runner
from prefect_cs.tiers.docker import DockerTier, image_repository, resolve_registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The distribution spec's repository path component and tag grammars.
COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def model(**fields) -> ModelConfig:
    return ModelConfig(
        owner=fields.pop("owner", "PSLmodels"),
        title=fields.pop("title", "Tax-Brain"),
        repo_url="x",
        **fields,
    )


@pytest.mark.parametrize(
    ("owner", "title"),
    [("PSLmodels", "Tax-Brain"), ("_x_", "--A__b--"), ("UPPER", "t_i_t_l_e"), ("a", "-")],
)
def test_image_names_are_valid_for_registries(owner, title):
    repository = image_repository("127.0.0.1:5000/", model(owner=owner, title=title))
    host, name = repository.split("/", 1)
    assert host == "127.0.0.1:5000"
    assert COMPONENT.match(name), name
    assert image_repository("r", model()) == "r/pslmodels_tax-brain"


@pytest.mark.parametrize("tag", ["v1", "release/2.0", ".hidden", "-x", "ü" * 3, "a" * 300])
def test_image_tags_are_valid(tag):
    assert TAG.match(image_tag(tag)), image_tag(tag)


def test_no_registry_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CS_REGISTRY", raising=False)
    monkeypatch.delenv("CS_REGISTRY_BLOCK", raising=False)
    with pytest.raises(StepFailed, match="CS_REGISTRY_BLOCK=cs-registry"):
        resolve_registry()
    monkeypatch.setenv("CS_REGISTRY", "http://registry.example:5000/")
    assert resolve_registry().host == "registry.example:5000"


def test_conda_install_script_is_refused_with_the_fix(tmp_path):
    with pytest.raises(StepFailed, match="install_override"):
        DockerTier().build(model(), EXAMPLES / "conda-app", "v1", logging.getLogger("t"))


def test_context_layers_and_no_secrets(tmp_path, monkeypatch):
    """Dependencies and code are separate COPY steps; the context holds no platform secret."""
    monkeypatch.setenv("CS_WEBAPP_TOKEN", "never-in-an-image")
    tier, config = DockerTier(), model(install_override="paramtools==0.20.0")
    cs_config = tier.prepare(config, EXAMPLES / "misbehaving-app")
    context = tier.build_context(config, cs_config, logging.getLogger("t"))
    dockerfile = (context / "Dockerfile").read_text()
    assert (
        dockerfile.index("COPY install/")
        < dockerfile.index("bash -e ./install.sh")
        < dockerfile.index("COPY cs-config/")
    )
    assert (
        context / "install" / "override-requirements.txt"
    ).read_text().strip() == "paramtools==0.20.0"
    assert sorted(p.name for p in (context / "install").iterdir()) == [
        "install.sh",
        "override-requirements.txt",
    ]
    # Nothing of the platform: no wheel, no requirements, no runner (issue 19).
    assert sorted(p.name for p in context.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "ca-certificates.crt",
        "cs-config",
        "install",
    ]
    assert "/opt/cs/platform" not in dockerfile and "child.py" not in dockerfile
    try:
        for path in context.rglob("*"):
            if path.is_file():
                assert b"never-in-an-image" not in path.read_bytes(), path
    finally:
        shutil.rmtree(context)


def test_job_variables_are_none_and_need_an_image(monkeypatch, platform):
    """The flow reads image, bounds and secrets from the config: the deployment carries none."""
    from prefect_cs.blocks.model_config import PublishedTag

    entry = PublishedTag(tag="v1", tier="docker", python="/opt/cs/model/bin/python", image="r/x:v1")
    assert DockerTier().job_variables(model(cpu=1.5, memory="1Gi"), entry) == {}
    with pytest.raises(ValueError, match="publish the tag with CS_TIER=docker"):
        DockerTier().job_variables(model(), entry.model_copy(update={"image": None}))


def test_model_child_is_the_oom_killers_first_choice(tmp_path):
    """In a container out of memory the model must die, not the flow that reports it."""

    from prefect_cs.runtime.model_process import call_model

    runner = script_runner(
        "import json, sys\n"
        "score = open('/proc/self/oom_score_adj').read().strip()\n"
        "json.dump({'ok': True, 'result': score, 'seconds': 0}, open(sys.argv[2], 'w'))\n"
    )
    call = call_model(model_python(), "run_model", [], timeout=30, runner=runner)
    assert call.ok and call.result == "1000"
    assert open("/proc/self/oom_score_adj").read().strip() != "1000"
