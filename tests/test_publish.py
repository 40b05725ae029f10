"""Publishing on the embedded tier: real git repositories, real virtualenvs, the model's own
tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.cli.main import app
from prefect_cs.testing.models import add_tag, make_repo, publish_model, register_model
from typer.testing import CliRunner


def read_deployment(name: str):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_publish_deploys_the_simulate_flow(misbehaving):
    model = ModelConfig.for_model("tests", "Misbehaving")
    assert model.latest_tag == "v1" and model.staging_tag == "v1"
    entry = model.published("v1")
    assert entry.version and entry.tier == "local"
    deployment = read_deployment("simulate/tests-misbehaving")
    assert deployment.entrypoint == "prefect_cs.flows.simulate:simulate"
    assert deployment.work_pool_name == "cs-process"
    assert deployment.version == "v1"
    assert deployment.parameters == {"owner": "tests", "title": "Misbehaving"}


def break_tests(repo):
    test_file = repo / "cs-config/cs_config/tests/test_functions.py"
    test_file.write_text(
        test_file.read_text()
        + "\n\ndef test_broken_on_purpose():\n    assert 1 == 2, 'BROKEN-ON-PURPOSE'\n"
    )


def test_failed_tests_keep_the_previous_tag_serving(platform, repos, caplog):
    repo = make_repo("misbehaving-app", repos / "rollback-app")
    register_model("tests", "Rollback", repo, repo_tag="v1", time_limit=10, expected_task_time=1)
    assert publish_model("tests", "Rollback").is_completed()

    add_tag(repo, "v2", "broken tests", break_tests)
    state = publish_model("tests", "Rollback", "v2")
    assert state.is_failed()
    assert "BROKEN-ON-PURPOSE" in caplog.text  # the step's own output reaches the logs
    model = ModelConfig.for_model("tests", "Rollback")
    assert model.latest_tag == "v1"
    assert [e.tag for e in model.published_tags] == ["v1"]
    assert read_deployment("simulate/tests-rollback").version == "v1"


def test_rollback_moves_the_deployment_back(platform, repos):
    repo = make_repo("misbehaving-app", repos / "rollback-ok-app")
    register_model("tests", "RollbackOk", repo, repo_tag="v1", time_limit=10, expected_task_time=1)
    assert publish_model("tests", "RollbackOk").is_completed()
    add_tag(repo, "v2", "second release")
    assert publish_model("tests", "RollbackOk", "v2").is_completed()
    assert read_deployment("simulate/tests-rollbackok").version == "v2"

    result = CliRunner().invoke(app, ["models", "rollback", "tests/RollbackOk", "v1"])
    assert result.exit_code == 0, result.output
    assert ModelConfig.for_model("tests", "RollbackOk").latest_tag == "v1"
    assert read_deployment("simulate/tests-rollbackok").version == "v1"

    result = CliRunner().invoke(app, ["models", "rollback", "tests/RollbackOk", "v7"])
    assert result.exit_code == 1
    assert ModelConfig.for_model("tests", "RollbackOk").latest_tag == "v1"


def test_conda_install_is_explained_and_override_fixes_it(platform, repos, caplog):
    repo = make_repo("conda-app", repos / "conda-app")
    register_model("tests", "Conda", repo, repo_tag="v1")
    state = publish_model("tests", "Conda")
    assert state.is_failed()
    assert "uses conda, which is not available" in caplog.text and "install_override" in caplog.text

    model = ModelConfig.for_model("tests", "Conda")
    model.install_override = "paramtools==0.20.0"
    model.save_model()
    assert publish_model("tests", "Conda").is_completed()
    assert ModelConfig.for_model("tests", "Conda").latest_tag == "v1"


def test_missing_tag_fails_clearly(platform, repos, caplog):
    repo = make_repo("misbehaving-app", repos / "no-tag-app")
    register_model("tests", "NoTag", repo, repo_tag="v404")
    assert publish_model("tests", "NoTag").is_failed()
    assert "has the tag 'v404'" in caplog.text


@pytest.mark.parametrize("bad", ["a b", "x/y", "", "ünï", "a" * 65, "../etc"])
def test_invalid_owner_or_title_is_refused(bad):
    with pytest.raises(ValueError, match="letters, digits, '-' and '_' only"):
        ModelConfig(owner=bad, title="ok", repo_url="/tmp")
    with pytest.raises(ValueError, match="letters, digits, '-' and '_' only"):
        ModelConfig(owner="ok", title=bad, repo_url="/tmp")


def test_cli_register_reports_bad_config(platform, tmp_path):
    config = tmp_path / "Bad.yaml"
    config.write_text("owner: good\ntitle: 'bad title'\nrepo_url: /tmp\nmemory: 2GB\ncolor: blue\n")
    result = CliRunner().invoke(app, ["models", "register", str(config)])
    assert result.exit_code == 1
    assert "unknown field(s) ['color']" in result.output
    config.write_text("owner: good\ntitle: 'bad title'\nrepo_url: /tmp\nmemory: 2GB\n")
    result = CliRunner().invoke(app, ["models", "register", str(config)])
    assert result.exit_code == 1
    assert "title" in result.output and "memory" in result.output


# ---- names and environments at publish (issue 10) --------------------------------

SLASH_TAG = "release/1.0"
OPERATOR_SECRET = "fake-operator-key-" + "5e1f"
# The model's tests run with a scratch HOME that is gone after publish (the venv is read-only
# by then): they check their own environment, and a leak fails the publish.
ENV_CHECK_TEST = f"""
import os
import sys


def test_environment_holds_nothing_of_the_operator():
    env = dict(os.environ)
    assert env["VIRTUAL_ENV"] == sys.prefix  # the check runs in the model's environment
    assert {OPERATOR_SECRET!r} not in repr(env)
    assert "SSH_AUTH_SOCK" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not [k for k in env if k.startswith(("PREFECT_", "CS_"))]
    assert not env["HOME"].startswith(sys.prefix)  # a scratch HOME, not the sealed venv
    assert os.access(env["HOME"], os.W_OK)
"""


def dump_environments(repo):
    """install.sh writes down the environment it was given; the model's tests check theirs."""
    install = repo / "cs-config/install.sh"
    install.write_text(install.read_text() + 'env > "$VIRTUAL_ENV/install-env.txt"\n')
    (repo / "cs-config/cs_config/tests/test_env_check.py").write_text(ENV_CHECK_TEST)


@pytest.fixture(scope="module")
def slash_tag_model(platform, repos):
    """An app published at `release/1.0` while the operator's environment holds credentials."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_SECRET_ACCESS_KEY", OPERATOR_SECRET)
    mp.setenv("SSH_AUTH_SOCK", "/tmp/operator-agent.sock")
    try:
        repo = make_repo("misbehaving-app", repos / "slash-tag-app", tag="v0")
        add_tag(repo, SLASH_TAG, "dump environments", dump_environments)
        register_model(
            "tests", "SlashTag", repo, repo_tag=SLASH_TAG, time_limit=10, expected_task_time=1
        )
        state = publish_model("tests", "SlashTag")
    finally:
        mp.undo()
    assert state.is_completed(), state.message
    return ModelConfig.for_model("tests", "SlashTag")


def test_tag_with_a_slash_publishes(slash_tag_model, cs_home):
    from prefect_cs.core.names import path_component

    assert slash_tag_model.latest_tag == SLASH_TAG
    venv = Path(slash_tag_model.published(SLASH_TAG).python).parents[1]
    assert venv.parent == cs_home / "envs" / "tests" / "SlashTag" / path_component(SLASH_TAG)
    assert read_deployment("simulate/tests-slashtag").version == SLASH_TAG


def read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if "=" in line]
    return dict(line.split("=", 1) for line in lines)


def test_install_and_model_tests_get_no_operator_variable(slash_tag_model):
    venv = Path(slash_tag_model.published(SLASH_TAG).python).parents[1]
    for dump in ("install-env.txt",):  # the model's tests checked theirs (ENV_CHECK_TEST)
        env = read_env(venv / dump)
        assert env["VIRTUAL_ENV"] == str(venv), dump  # the probe ran in the model's environment
        assert OPERATOR_SECRET not in (venv / dump).read_text(), dump
        assert "SSH_AUTH_SOCK" not in env and "AWS_SECRET_ACCESS_KEY" not in env, dump
        assert not [k for k in env if k.startswith(("PREFECT_", "CS_"))], dump
        assert env["HOME"] != os.environ.get("HOME") and env["HOME"].startswith(str(venv)), dump


@pytest.mark.skipif(os.geteuid() != 0, reason="sealing hands the venv to root: root only")
def test_published_venv_is_sealed_against_the_model(slash_tag_model):
    """After publish nothing in the venv is the model's uid's or writable by it, no set-id bit,
    and the runner is the platform's own (install.sh ran as that uid and wrote the venv)."""
    import stat

    from prefect_cs.runtime.model_process import CHILD_SCRIPT

    venv = Path(slash_tag_model.published(SLASH_TAG).python).parents[1]
    entries = [venv, *venv.rglob("*")]
    assert (venv / "install-env.txt").exists()  # install.sh (the model's uid) wrote in here
    not_root = [str(p) for p in entries if p.lstat().st_uid != 0]
    assert not_root == []
    open_modes = [
        str(p)
        for p in entries
        if not p.is_symlink() and p.lstat().st_mode & (0o022 | stat.S_ISUID | stat.S_ISGID)
    ]
    assert open_modes == []
    assert (venv / "cs-runtime" / "child.py").read_text() == CHILD_SCRIPT.read_text()


def test_a_republished_tag_keeps_its_first_place_and_time():
    """A pull request staged again re-publishes its tag: before, the tag moved to the end of
    published_tags, so for tags that are no versions a re-stage made an old tag "newer"."""
    from prefect_cs.blocks.model_config import PublishedTag
    from prefect_cs.core.tag_order import older_than_promoted

    model = ModelConfig(owner="tests", title="Order", repo_url="https://github.com/o/r")
    first = PublishedTag(tag="stable", python="/old/python")
    model.record(first)
    model.record(PublishedTag(tag="nightly", python="/python"))
    model.record(PublishedTag(tag="stable", python="/new/python", version="2"))
    assert [e.tag for e in model.published_tags] == ["stable", "nightly"]
    again = model.published("stable")
    assert (again.python, again.version) == ("/new/python", "2")  # the new build serves
    assert again.published_at == first.published_at  # first publish time kept
    history = [e.tag for e in model.published_tags]
    assert older_than_promoted("stable", "nightly", history) is not None


def race_model(title: str, misbehaving: ModelConfig) -> None:
    """tests/TITLE with v3.0 promoted and v3.10, v3.20 published (misbehaving's environment)."""
    entry = ModelConfig.for_model("tests", "Misbehaving").published("v1")
    ModelConfig(
        owner="tests",
        title=title,
        repo_url=misbehaving.repo_url,
        repo_tag="v1",
        time_limit=8,
        expected_task_time=1,
        memory="512Mi",
        published_tags=[entry.model_copy(update={"tag": t}) for t in ("v3.0", "v3.10", "v3.20")],
        latest_tag="v3.0",
    ).save_model()


def test_two_tags_promoted_at_once_never_end_on_the_older_one(misbehaving):
    """Issue 24: v3.20 and then v3.10 pushed at once, both accepted by the receiver (nothing
    newer was promoted when they arrived). Two real `prefect-cs models publish --steps promote
    --forward-only` processes (what a webhook run does: the trigger sets forward_only) race;
    whichever order their promotes land in, v3.20 ends promoted and deployed, and v3.10,
    promoted after it, is refused naming why. Then v3.10 alone, once more: refused."""
    import subprocess
    import sys
    import time

    race_model("Race", misbehaving)
    cli = Path(sys.executable).parent / "prefect-cs"

    def promote(tag: str) -> subprocess.Popen:
        command = ["models", "publish", "tests/Race", "--tag", tag, "--steps", "promote"]
        return subprocess.Popen(
            [str(cli), *command, "--forward-only"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    newer = promote("v3.20")
    time.sleep(0.5)
    older = promote("v3.10")
    newer_out, _ = newer.communicate(timeout=300)
    older_out, _ = older.communicate(timeout=300)
    assert newer.returncode == 0, newer_out
    assert ModelConfig.for_model("tests", "Race").latest_tag == "v3.20", (newer_out, older_out)
    assert read_deployment("simulate/tests-race").version == "v3.20"
    if older.returncode != 0:  # its promote came second
        assert "older than the promoted 'v3.20'" in " ".join(older_out.split()), older_out

    again = promote("v3.10")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 1 and "models rollback tests/Race v3.10" in " ".join(out.split())
    assert ModelConfig.for_model("tests", "Race").latest_tag == "v3.20"
    assert read_deployment("simulate/tests-race").version == "v3.20"


def test_the_record_lock_makes_read_check_write_one_step(misbehaving, monkeypatch):
    """The same race with the window between promote's read and its write held open (a slow
    save): without the model's record lock both promotes read v3.0, both pass the check, and
    the later write (v3.10) wins. With it, v3.10 reads the record only after v3.20's write."""
    import threading
    import time

    from prefect_cs.flows.publish import publish

    race_model("RaceLock", misbehaving)
    save = ModelConfig.save_model

    def slow_save(self: ModelConfig) -> None:
        if self.title == "RaceLock":
            time.sleep(1.5)
        save(self)

    monkeypatch.setattr(ModelConfig, "save_model", slow_save)
    states: dict[str, object] = {}

    def promote(tag: str) -> None:
        states[tag] = publish(
            "tests", "RaceLock", tag, "promote", forward_only=True, return_state=True
        )

    threads = [threading.Thread(target=promote, args=(tag,)) for tag in ("v3.20", "v3.10")]
    threads[0].start()
    time.sleep(0.5)
    threads[1].start()
    for thread in threads:
        thread.join(300)
    monkeypatch.undo()
    assert ModelConfig.for_model("tests", "RaceLock").latest_tag == "v3.20"
    assert states["v3.20"].is_completed() and states["v3.10"].is_failed()
    assert "older than the promoted 'v3.20'" in states["v3.10"].message
