"""Which repositories publish clones (issue 18): remote git only, local paths under an operator's
prefix.

Publish clones as the platform's user (root on the process tier), so a repo_url from
`/sync/` or a YAML file must not name a folder of the cluster or a transport that runs
a command. Real parts: git itself, the session's Prefect server (the registry), the
publish flow and `prefect-cs models register`; `/sync/` is in tests/test_api.py.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from prefect_cs.core.errors import ConfigError
from prefect_cs.core.repo_urls import clone_source
from prefect_cs.core.settings import as_env, get_settings

SETTING = "CS_LOCAL_REPO_PREFIXES"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/PSLmodels/Tax-Cruncher",
        "https://github.com/PSLmodels/Tax-Cruncher.git",
        "ssh://git@github.com/PSLmodels/Tax-Cruncher.git",
        "ssh://git@github.com:22/PSLmodels/Tax-Cruncher.git",
        "git://example.org/models/calc.git",
        "git@github.com:PSLmodels/Tax-Cruncher.git",
        "github.com:PSLmodels/Tax-Cruncher",
    ],
)
def test_remote_repositories_are_cloned_as_given(url):
    assert clone_source(url, ()) == url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("/srv/models/calc", "is a local path; the platform clones only remote"),
        ("file:///srv/models/calc", "is a local path"),
        ("./calc", "is a local path"),
        ("calc", "is a local path"),
        ("~/calc", "is a local path"),
        ("http://github.com/PSLmodels/Tax-Cruncher", "plain http"),
        ("ext::sh -c touch% /tmp/pwned", "remote helper"),
        ("fd::17", "remote helper"),
        ("ftp://example.org/calc.git", "git transport 'ftp'"),
        ("ssh://-oProxyCommand=touch%20x/calc", "no valid host"),
        ("ssh://-oProxyCommand=x@host/calc", "no valid host"),
        ("git@-oProxyCommand=x:calc", "neither a URL nor a valid user@host:path"),
        ("-u", "invalid repo_url"),
    ],
)
def test_everything_else_is_refused_naming_the_problem_and_the_fix(url, said):
    with pytest.raises(ConfigError, match="repo_url") as refused:
        clone_source(url, ())
    assert said in str(refused.value)
    if said.startswith("is a local path"):
        assert SETTING in str(refused.value) and "https://" in str(refused.value)


@pytest.fixture
def prefix(tmp_path) -> Path:
    (tmp_path / "allowed" / "calc").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "allowed"


def test_a_local_repository_under_a_prefix_is_cloned_from_its_resolved_folder(prefix):
    expected = (prefix / "calc").resolve().as_uri()
    assert clone_source(str(prefix / "calc"), [prefix]) == expected
    assert clone_source((prefix / "calc").as_uri(), [prefix]) == expected
    assert clone_source(str(prefix / "x" / ".." / "calc"), [prefix]) == expected


def test_escapes_from_a_prefix_are_refused(prefix):
    outside = prefix.parent / "elsewhere"
    (prefix / "link").symlink_to(outside)
    for url in (
        str(prefix / ".." / "elsewhere"),
        f"file://{prefix}/../elsewhere",
        str(prefix / "link"),
        str(prefix) + "-sibling",  # a prefix is a folder, not a string prefix
        "/etc",
    ):
        with pytest.raises(ConfigError, match="not under CS_LOCAL_REPO_PREFIXES"):
            clone_source(url, [prefix])
    with pytest.raises(ConfigError, match="relative path"):
        clone_source("calc", [prefix])


def test_the_setting_reads_json_or_colon_lists_of_absolute_paths(monkeypatch):
    from prefect_cs.core.errors import SettingsError

    monkeypatch.setenv(SETTING, "/srv/a:/srv/b")
    prefixes = get_settings().local_repo_prefixes
    assert prefixes == [Path("/srv/a"), Path("/srv/b")]
    monkeypatch.setenv(SETTING, as_env(prefixes))  # as a worker receives it (JSON)
    assert get_settings().local_repo_prefixes == prefixes
    monkeypatch.setenv(SETTING, "srv/a")
    with pytest.raises(SettingsError, match=f"{SETTING}.*absolute"):
        get_settings()
    monkeypatch.delenv(SETTING)
    assert get_settings().local_repo_prefixes == []


def test_git_itself_refuses_other_transports_when_the_check_is_bypassed(tmp_path, monkeypatch):
    """The clone's argv allows git only the transports the rule allows: a second fence."""
    from prefect_cs.flows import publish

    marker = tmp_path / "pwned"
    argv = publish.clone_command(f"ext::sh -c touch% {marker}", "v1", tmp_path / "dest")
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "transport 'ext' not allowed" in done.stderr
    assert not marker.exists()
    local = publish.clone_command((tmp_path / "repo").as_uri(), "v1", tmp_path / "dest")
    remote = publish.clone_command("https://example.org/x.git", "v1", tmp_path / "dest")
    assert "protocol.file.allow=always" in local and "protocol.file.allow=always" not in remote


# ---- where a URL enters the registry, and where it is cloned ---------------------------


def test_register_refuses_a_local_path_without_the_setting_and_writes_nothing(
    platform, repos, monkeypatch
):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import register

    title = f"Local-{uuid.uuid4().hex[:6]}"
    monkeypatch.delenv(SETTING)
    with pytest.raises(ConfigError, match="is a local path"):
        register(ModelConfig(owner="tests", title=title, repo_url=str(repos / "any")))
    with pytest.raises(LookupError, match="not registered"):
        ModelConfig.for_model("tests", title)


def test_cli_register_refuses_file_urls_and_names_the_fix(platform, tmp_path):
    from prefect_cs.cli.main import app
    from typer.testing import CliRunner

    config = tmp_path / "Calc.yaml"
    config.write_text(f"owner: tests\ntitle: Calc-{uuid.uuid4().hex[:6]}\nrepo_tag: v1\n")
    result = CliRunner().invoke(
        app, ["models", "register", str(config), "--repo-url", "file:///etc"]
    )
    assert result.exit_code == 1, result.output
    assert "'file:///etc' resolves to /etc, which is not under" in " ".join(result.output.split())
    result = CliRunner().invoke(
        app, ["models", "register", str(config), "--repo-url", "ext::sh -c id"]
    )
    assert result.exit_code == 1 and "remote helper" in result.output


def outside_repo(tmp_path: Path) -> Path:
    """A real git repository tagged v1, outside the tests' CS_LOCAL_REPO_PREFIXES."""
    from prefect_cs.testing.models import make_repo

    assert not tmp_path.resolve().is_relative_to(get_settings().local_repo_prefixes[0].resolve())
    return make_repo("misbehaving-app", tmp_path / "outside")


def test_publish_refuses_a_config_written_past_register(platform, tmp_path, cs_home):
    """A config saved without `register` (a block edited in the UI, an old record) still cannot
    make publish clone a folder outside the allowed prefixes: nothing is cloned."""
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.testing.models import publish_model

    title = f"Outside-{uuid.uuid4().hex[:6]}"
    repo = outside_repo(tmp_path)
    ModelConfig(owner="tests", title=title, repo_url=str(repo), repo_tag="v1").save_model()
    before = set(os.listdir(cs_home / "repos")) if (cs_home / "repos").exists() else set()
    state = publish_model("tests", title)
    assert state.is_failed(), state.message
    with pytest.raises(ConfigError, match=f"not under {SETTING}"):
        state.result()
    after = set(os.listdir(cs_home / "repos")) if (cs_home / "repos").exists() else set()
    assert not [name for name in after - before if title.lower() in name], "it cloned"
