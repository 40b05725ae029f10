"""Publish reports commit statuses to a real HTTP stand-in for the GitHub API.

`steps="promote"` of the already published misbehaving app keeps these runs
short while going through the whole flow (pending → promote → deploy → success).
"""

from __future__ import annotations

import secrets
import time

import pytest
from prefect_cs.flows.publish import publish
from prefect_cs.testing.webhooks import free_port, new_sha

REPO = "tests-org/misbehaving"


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


def states(standin, sha: str) -> list[str]:
    return [r.body["state"] for r in standin.statuses(sha)]


def test_success_is_reported_pending_then_success_with_the_run_link(misbehaving, github):
    sha = new_sha()
    state = publish("tests", "Misbehaving", "v1", "promote", sha=sha, repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert states(github, sha) == ["pending", "success"]
    pending, success = github.statuses(sha)
    assert pending.path == f"/repos/{REPO}/statuses/{sha}"
    assert pending.headers["Authorization"] == f"Bearer {github.token}"
    run_id = str(state.state_details.flow_run_id)
    assert run_id in success.body["target_url"]
    assert success.body["target_url"].startswith("http://127.0.0.1:")
    assert success.body["context"] == "prefect-cs/publish"
    assert "v1" in success.body["description"]


def test_failure_is_reported_and_the_publish_still_fails(misbehaving, github):
    sha = new_sha()
    state = publish(
        "tests", "Misbehaving", "v-none", "promote", sha=sha, repo=REPO, return_state=True
    )
    assert state.is_failed()
    assert states(github, sha) == ["pending", "failure"]
    assert github.token not in str(github.statuses(sha)[-1].body)


def test_github_errors_are_retried_a_bounded_number_of_times_and_never_fail_publish(
    misbehaving, github
):
    github.status_code = 500
    sha = new_sha()
    state = publish("tests", "Misbehaving", "v1", "promote", sha=sha, repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert states(github, sha) == ["pending", "pending", "success", "success"]  # 2 attempts each


def test_unreachable_github_does_not_fail_or_stall_publish(misbehaving, github, monkeypatch):
    monkeypatch.setenv("CS_GITHUB_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CS_GITHUB_TIMEOUT_SECONDS", "1")
    started = time.monotonic()
    state = publish(
        "tests", "Misbehaving", "v1", "promote", sha=new_sha(), repo=REPO, return_state=True
    )
    assert state.is_completed(), state.message
    assert time.monotonic() - started < 60


def test_a_github_that_accepts_and_never_answers_costs_publish_a_bounded_time(
    misbehaving, github, monkeypatch, caplog
):
    """Connection accepted, request read, no answer: each status gets its attempts of
    CS_GITHUB_TIMEOUT_SECONDS, the publish completes, and the run log says what was lost."""
    monkeypatch.setenv("CS_GITHUB_TIMEOUT_SECONDS", "1")
    sha = new_sha()
    github.hang()
    try:
        started = time.monotonic()
        state = publish(
            "tests", "Misbehaving", "v1", "promote", sha=sha, repo=REPO, return_state=True
        )
        took = time.monotonic() - started
    finally:
        github.answer_again()
    assert state.is_completed(), state.message
    assert states(github, sha) == ["pending", "pending", "success", "success"]  # all reached it
    assert took < 30, took  # 2 statuses x (2 attempts of 1 s + 1 s backoff) + the promote
    lost = [r.getMessage() for r in caplog.records if "not reported" in r.getMessage()]
    assert len(lost) == 2 and all("ReadTimeout" in m for m in lost), lost


def test_no_repo_or_no_credentials_means_no_status(misbehaving, github, monkeypatch):
    sha = new_sha()
    assert publish(
        "tests", "Misbehaving", "v1", "promote", sha=sha, return_state=True
    ).is_completed()
    monkeypatch.setenv("CS_GITHUB_CREDENTIALS_BLOCK", "no-such-block")
    state = publish("tests", "Misbehaving", "v1", "promote", sha=sha, repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert github.statuses(sha) == []


def test_a_run_without_sha_reports_on_the_commit_it_clones(misbehaving, github):
    """A release names a tag, not a commit: publish reports on what it actually built."""
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "v1^{commit}"],
        cwd=misbehaving.repo_url,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    state = publish("tests", "Misbehaving", "v1", "stage", repo=REPO, return_state=True)
    assert state.is_completed(), state.message
    assert states(github, commit) == ["pending", "success"]
    assert "staged" in github.statuses(commit)[-1].body["description"]
