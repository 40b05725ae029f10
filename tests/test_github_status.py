"""Publish reports commit statuses to a real HTTP stand-in for the GitHub API.

`steps="promote"` of the already published misbehaving app keeps these runs
short while going through the whole flow (pending → promote → deploy → success).
The model `tests/StatusTarget` is that app registered under a GitHub repo_url:
statuses go only to that repository, on the commit publish built, whatever
repository and commit the run's parameters name (issue 24).
"""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.flows.publish import publish
from prefect_cs.testing.webhooks import free_port, new_sha

REPO = "tests-org/misbehaving"  # StatusTarget's own repository
ELSEWHERE = "rt-org/cs-publish"  # what a payload could name instead
CONTEXT = "prefect-cs/publish/tests/StatusTarget"


@pytest.fixture
def github(platform, monkeypatch):
    from prefect_cs.testing.github_standin import GitHubStandIn
    from prefect_github import GitHubCredentials

    standin = GitHubStandIn(token="ghp_" + secrets.token_hex(16))
    standin.start()
    GitHubCredentials(token=standin.token).save("cs-github-status-test", overwrite=True, _sync=True)
    monkeypatch.setenv("CS_GITHUB_API_URL", standin.url)
    monkeypatch.setenv("CS_GITHUB_CREDENTIALS_BLOCK", "cs-github-status-test")
    yield standin
    standin.stop()


def tag_commit(repo: str, tag: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", f"{tag}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def built(misbehaving) -> str:
    """tests/StatusTarget: Misbehaving's v1 environment, published as v1 and v2 from the
    commit v1 resolves to, v1 promoted; returns that commit."""
    commit = tag_commit(misbehaving.repo_url, "v1")
    entry = ModelConfig.for_model("tests", "Misbehaving").published("v1")
    entries = [entry.model_copy(update={"tag": t, "commit": commit}) for t in ("v1", "v2")]
    ModelConfig(
        owner="tests",
        title="StatusTarget",
        repo_url=f"https://github.com/{REPO}",
        repo_tag="v1",
        time_limit=8,
        expected_task_time=1,
        memory="512Mi",
        published_tags=entries,
        latest_tag="v1",
    ).save_model()
    return commit


def states(standin, sha: str) -> list[str]:
    return [r.body["state"] for r in standin.statuses(sha)]


def test_success_is_reported_pending_then_success_with_the_run_link(built, github):
    state = publish(
        "tests", "StatusTarget", "v1", "promote", sha=new_sha(), repo=REPO, return_state=True
    )
    assert state.is_completed(), state.message
    assert states(github, built) == ["pending", "success"]
    pending, success = github.statuses(built)
    assert pending.path == f"/repos/{REPO}/statuses/{built}"
    assert pending.headers["Authorization"] == f"Bearer {github.token}"
    run_id = str(state.state_details.flow_run_id)
    assert run_id in success.body["target_url"]
    assert success.body["target_url"].startswith("http://127.0.0.1:")
    assert success.body["context"] == CONTEXT
    assert "v1" in success.body["description"]


def test_the_status_goes_to_the_models_repository_and_built_commit_not_the_requested(built, github):
    """Before: the run posted pending, then success, on whatever repo and sha it was given (a
    push signed with the cluster key could name the publish repository's pull-request head)."""
    asked = new_sha()
    state = publish(
        "tests", "StatusTarget", "v1", "promote", sha=asked, repo=ELSEWHERE, return_state=True
    )
    assert state.is_completed(), state.message
    assert not any(ELSEWHERE in r.path or asked in r.path for r in github.statuses())
    assert states(github, built) == ["pending", "success"]
    assert {r.route for r in github.statuses()} == {f"/repos/{REPO}/statuses/{built}"}


def test_a_refused_older_tag_fails_the_run_and_says_why_in_the_status(built, github):
    model = ModelConfig.for_model("tests", "StatusTarget")
    model.latest_tag = "v2"
    model.save_model()
    state = publish(
        "tests", "StatusTarget", "v1", "promote", repo=REPO, forward_only=True, return_state=True
    )
    assert state.is_failed()
    assert "older than the promoted 'v2'" in state.message and "models rollback" in state.message
    assert states(github, built) == ["pending", "failure"]
    description = github.statuses(built)[-1].body["description"]
    assert description.startswith("refused: tests/StatusTarget: tag 'v1' is older than"), (
        description
    )
    assert ModelConfig.for_model("tests", "StatusTarget").latest_tag == "v2"
    # rollback (no forward_only) is still the way back
    assert publish("tests", "StatusTarget", "v1", "promote", return_state=True).is_completed()
    assert ModelConfig.for_model("tests", "StatusTarget").latest_tag == "v1"


def test_failure_is_reported_and_the_publish_still_fails(built, github, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("deploy broke")

    monkeypatch.setattr("prefect_cs.deployments.deploy.deploy_model", broken)
    state = publish("tests", "StatusTarget", "v1", "promote", repo=REPO, return_state=True)
    assert state.is_failed()
    assert states(github, built) == ["pending", "failure"]
    assert github.token not in str(github.statuses(built)[-1].body)


def test_github_errors_are_retried_a_bounded_number_of_times_and_never_fail_publish(built, github):
    github.status_code = 500
    state = publish("tests", "StatusTarget", "v1", "promote", repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert states(github, built) == ["pending", "pending", "success", "success"]  # 2 attempts each


def test_unreachable_github_does_not_fail_or_stall_publish(built, github, monkeypatch):
    monkeypatch.setenv("CS_GITHUB_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CS_GITHUB_TIMEOUT_SECONDS", "1")
    started = time.monotonic()
    state = publish("tests", "StatusTarget", "v1", "promote", repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert time.monotonic() - started < 60


def test_a_github_that_accepts_and_never_answers_costs_publish_a_bounded_time(
    built, github, monkeypatch, caplog
):
    """Connection accepted, request read, no answer: each status gets its attempts of
    CS_GITHUB_TIMEOUT_SECONDS, the publish completes, and the run log says what was lost."""
    monkeypatch.setenv("CS_GITHUB_TIMEOUT_SECONDS", "1")
    github.hang()
    try:
        started = time.monotonic()
        state = publish("tests", "StatusTarget", "v1", "promote", repo=REPO, return_state=True)
        took = time.monotonic() - started
    finally:
        github.answer_again()
    assert state.is_completed(), state.message
    assert states(github, built) == ["pending", "pending", "success", "success"]  # all reached it
    assert took < 30, took  # 2 statuses x (2 attempts of 1 s + 1 s backoff) + the promote
    lost = [r.getMessage() for r in caplog.records if "not reported" in r.getMessage()]
    assert len(lost) == 2 and all("ReadTimeout" in m for m in lost), lost


def test_no_repo_or_no_credentials_means_no_status(built, github, monkeypatch, misbehaving):
    assert publish("tests", "StatusTarget", "v1", "promote", return_state=True).is_completed()
    # a model whose repo_url is a local path has no GitHub repository to report to
    state = publish("tests", "Misbehaving", "v1", "promote", repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    monkeypatch.setenv("CS_GITHUB_CREDENTIALS_BLOCK", "no-such-block")
    state = publish("tests", "StatusTarget", "v1", "promote", repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert github.statuses() == []


def test_a_run_reports_on_the_commit_it_clones(built, github, misbehaving, monkeypatch):
    """A release names a tag, not a commit, and a push's payload may name any commit: publish
    reports on what it actually built (git_source points the model's GitHub URL at the sample
    repository here: no network)."""
    import prefect_cs.flows.publish as flow

    local = flow.git_source(misbehaving.repo_url)
    monkeypatch.setattr(flow, "git_source", lambda url: local)
    asked = new_sha()
    state = publish(
        "tests", "StatusTarget", "v1", "stage", sha=asked, repo=ELSEWHERE, return_state=True
    )
    assert state.is_completed(), state.message
    assert states(github, built) == ["pending", "success"]
    assert "staged" in github.statuses(built)[-1].body["description"]
    assert github.statuses(asked) == []
    assert ModelConfig.for_model("tests", "StatusTarget").published("v1").commit == built
