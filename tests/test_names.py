"""Names that reach git, paths, image references and job environments (issue 10, "Names").

Secret names, tags, repository URLs, image names and task ids come from model configs,
webhooks and the web app: each is refused where it enters or derived safely where it is used.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.cli.main import app
from prefect_cs.core import names
from prefect_cs.core.errors import ConfigError, NotConfigured
from prefect_cs.core.names import check_tag, image_tag, path_component
from prefect_cs.registry.configs import read_config, register
from typer.testing import CliRunner

COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")  # the distribution spec's
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def model(**fields) -> ModelConfig:
    fields.setdefault("owner", "tests")
    fields.setdefault("title", "Names")
    fields.setdefault("repo_url", "https://example.org/tests/repo.git")
    return ModelConfig(**fields)


# ---- secret names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["PREFECT_API_URL", "CS_HOME", "PATH", "HOME", "LD_PRELOAD", "PYTHONPATH", "pip_index_url"],
)
def test_platform_variables_are_refused_as_declared_secrets(tmp_path, name):
    config = tmp_path / "Names.yaml"
    config.write_text(f"owner: tests\ntitle: Names\nrepo_url: /tmp\nsecrets: [API_KEY, {name}]\n")
    with pytest.raises(ConfigError, match="may not be platform variables: PREFECT_\\*, CS_\\*"):
        read_config(config)


def test_only_the_exact_webhook_key_name_may_be_declared_and_model_code_never_gets_it():
    """GITHUB_WEBHOOK_SECRET is a model's per-repository webhook key (services/webhook/keys.py)."""
    with pytest.raises(ValueError, match="the platform's own"):
        model(secrets=["github_webhook_secret"])
    declared = model(secrets=["API_KEY", "GITHUB_WEBHOOK_SECRET", "my-token"])
    assert names.model_code_secrets(declared.secrets) == ["API_KEY", "my-token"]


@pytest.mark.parametrize("scope", [(), ("models", "-n", "tests/Names")])
def test_the_secrets_cli_refuses_platform_variables(platform, scope):
    result = CliRunner().invoke(
        app, [*scope, "secrets", "set", "--name", "PREFECT_API_URL", "--value", "x"]
    )
    assert result.exit_code == 1
    assert "may not be platform variables" in result.output, result.output


def test_declared_secrets_never_come_from_the_flows_environment(platform, monkeypatch):
    """Process tier: the flow's environment is the operator's; only the backend counts.
    Container jobs: only the `CS_SECRET_<name>` variable the job was started with counts."""
    from prefect_cs.core.errors import SecretNotFound
    from prefect_cs.runtime.environment import declared_secrets
    from prefect_cs.security.secrets import get_backend

    declared = model(title="EnvOnly", secrets=["ENV_ONLY_TOKEN"])
    monkeypatch.setenv("ENV_ONLY_TOKEN", "operator-value")
    with pytest.raises(SecretNotFound):
        declared_secrets(declared)
    get_backend("tests/EnvOnly").set("ENV_ONLY_TOKEN", "backend-value")
    try:
        assert declared_secrets(declared) == {"ENV_ONLY_TOKEN": "backend-value"}
        monkeypatch.setenv("CS_SECRETS_SOURCE", "env")
        with pytest.raises(NotConfigured, match="ENV_ONLY_TOKEN"):
            declared_secrets(declared)
        monkeypatch.setenv("CS_SECRET_ENV_ONLY_TOKEN", "job-value")
        assert declared_secrets(declared) == {"ENV_ONLY_TOKEN": "job-value"}
    finally:
        get_backend("tests/EnvOnly").delete("ENV_ONLY_TOKEN")


def test_kubernetes_model_containers_carry_declared_secrets_under_their_own_names():
    """Only the Job's model container holds them (the flow container none), so there they have
    the names the model reads; reserved names stay refused."""
    from prefect_cs.tiers.kubernetes import secret_env

    entries = secret_env(model(title="K8sNames", secrets=["API_TOKEN"]))
    assert [e["name"] for e in entries] == ["API_TOKEN"]
    assert entries[0]["valueFrom"]["secretKeyRef"]["key"] == "API_TOKEN"


# ---- tags -----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["v1", "release/1.0", "v1.2.3-rc_1", "main", "_x/y.z"])
def test_good_tags_pass_and_git_agrees(tag):
    assert check_tag(tag) == tag
    assert subprocess.run(["git", "check-ref-format", f"refs/tags/{tag}"]).returncode == 0


@pytest.mark.parametrize(
    "tag",
    ["-x", "--upload-pack=x", "a..b", "a/.b", ".a", "x.lock", "a/b.lock/c", "/a", "a/", "a//b",
     "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a@{1}", "x.", "", "ü", "a" * 129,
     "v1\n"],
)  # fmt: skip
def test_bad_tags_are_refused(tag):
    with pytest.raises(ValueError, match="ref-format"):
        check_tag(tag)
    with pytest.raises(ValueError, match="ref-format"):
        model(repo_tag=tag)


def test_tags_become_safe_distinct_path_components():
    tags = ["release/1.0", "release-1.0", "rel/1", "rel-1", "..", "a/../b", "x--h0123abcd"]
    components = [path_component(tag) for tag in tags]
    assert len(set(components)) == len(tags)
    for component in components:
        assert "/" not in component and not component.startswith(".")
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", component)
    assert path_component("v1") == "v1"  # clean tags are kept as they are


# ---- repository URLs --------------------------------------------------------------


@pytest.mark.parametrize("url", ["-x", "--upload-pack=touch /tmp/x", "", "/tmp/a\nb"])
def test_repo_url_starting_with_a_dash_is_refused(url):
    with pytest.raises(ValueError, match="repo_url"):
        model(repo_url=url)


def test_repo_url_never_reaches_git_as_an_option(tmp_path):
    """Even a URL that got past the model config is a URL to git: `--` ends the options."""
    from prefect_cs.flows import publish

    marker = tmp_path / "pwned"
    url = f"--upload-pack=touch {marker};false"
    with pytest.raises(ValueError, match="repo_url"):
        publish.git_source(url)
    argv = publish.clone_command(url, "v1", tmp_path / "dest")
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert not marker.exists(), "git ran the URL as --upload-pack"
    assert "does not exist" in done.stderr or "not appear to be a git repository" in done.stderr


# ---- image names ------------------------------------------------------------------


def test_image_names_are_collision_free():
    from prefect_cs.tiers.docker import image_repository

    first = image_repository("r", model(owner="PSLmodels", title="Tax-Brain"))
    second = image_repository("r", model(owner="PSLmodels-", title="Tax-Brain"))
    assert first == "r/pslmodels_tax-brain" and second != first
    assert COMPONENT.match(second.split("/", 1)[1]), second
    assert image_tag("rel/1") != image_tag("rel-1") == "rel-1"
    assert TAG.match(image_tag("rel/1")), image_tag("rel/1")
    assert image_tag("x--h0123abcd") != "x--h0123abcd"  # a name cannot pose as a hashed one


def lossy_component(text: str) -> str:
    """The mapping before issue 10: `PSLmodels` and `PSLmodels-` both became `pslmodels`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def test_a_registration_sharing_an_image_repository_is_refused(platform, monkeypatch):
    register(model(owner="Collide", title="Tax-Brain"))
    register(model(owner="Collide-", title="Tax-Brain"))  # distinct names, distinct images
    monkeypatch.setattr(names, "image_component", lossy_component)
    with pytest.raises(ConfigError, match="share the image repository 'collide_tax-brain'"):
        register(model(owner="Collide-", title="Tax-Brain"))
    monkeypatch.undo()
    register(model(owner="Collide", title="Tax-Brain"))  # a model never collides with itself


# ---- task ids -------------------------------------------------------------------------

BAD_TASK_IDS = [
    "../../x",
    "",
    "not-a-uuid",
    "e64d4b3f-8c7f-4dbf-8b5f-0d829ecdef18/..",  # fixed: xdist workers must collect the same ids
    "{4562861a-80ea-417f-b7e1-bdb13f714319}",
]


@pytest.mark.parametrize("task_id", BAD_TASK_IDS)
def test_submit_refuses_a_task_id_that_is_not_a_uuid(task_id):
    from prefect_cs.deployments.submit import submit_simulation

    with pytest.raises(ValueError, match="invalid task_id .* use a UUID"):
        submit_simulation("tests", "Names", task_id=task_id)


def test_simulate_refuses_a_task_id_that_is_not_a_uuid(platform, webapp):
    from prefect_cs.flows.simulate import simulate

    state = simulate("tests", "Names", "../../x", {}, {}, return_state=True)
    assert state.is_failed() and "use a UUID" in state.message
    assert not webapp.requests


def test_a_kept_result_never_leaves_the_undelivered_folder(cs_home):
    from prefect_cs.core.settings import get_settings
    from prefect_cs.flows.notify import keep_undelivered, undelivered

    folder = get_settings().undelivered_dir
    kept = keep_undelivered("/outputs/api/", {"task_id": "../../x", "status": "FAIL"}, "refused")
    assert kept.parent == folder and kept in undelivered()
    assert kept.name.startswith("invalid-task-id-")
    good = keep_undelivered("/outputs/api/", {"task_id": (task_id := str(uuid.uuid4()))}, "e")
    assert good.name.startswith(task_id)
    assert not list(Path(folder).parent.parent.glob("x-*"))
    kept.unlink()
    good.unlink()
