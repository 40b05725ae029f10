"""GitHub deliveries → cs.publish.requested events → publish runs, on real parts.

The receiver is `prefect-cs webhook serve` (uvicorn) in its own process; the
publish deployment and its triggers are created by `deploy_publish()` on the
session's Prefect server, whose automation services turn events into runs.
No worker runs here: a run being *created* with the right parameters is what
the receiver and the trigger are responsible for.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect_cs.deployments.triggers import (
    PUBLISH_TRIGGERS,
    PublishRequest,
    cloud_webhook_template,
)
from prefect_cs.services.webhook import (
    DeliveryStore,
    normalize_repo_url,
    signature,
    signature_ok,
)
from prefect_cs.testing.webhooks import (
    deliver,
    new_sha,
    pull_request,
    runs_with,
    runs_with_sha,
    start_receiver,
    stop_receiver,
    tag_push,
    wait_for_runs,
)

MODEL_REPO = "hooks-org/tagged-model"
PUBLISH_REPO = "hooks-org/cs-publish"
SETTLE_SECONDS = 3.0


@pytest.fixture(scope="module")
def github(platform):
    from prefect_cs.testing.github_standin import GitHubStandIn
    from prefect_github import GitHubCredentials

    standin = GitHubStandIn(token="ghp_" + secrets.token_hex(16))
    standin.start()
    GitHubCredentials(token=standin.token).save("cs-github", overwrite=True, _sync=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CS_GITHUB_API_URL", standin.url)
        yield standin
    standin.stop()


@pytest.fixture(scope="module")
def webhook_secret(platform) -> str:
    from prefect_cs.security.secrets import get_backend

    value = secrets.token_urlsafe(32)
    get_backend(None).set("GITHUB_WEBHOOK_SECRET", value)
    return value


@pytest.fixture(scope="module")
def publish_deployment(platform):
    from prefect_cs.deployments.deploy import deploy_publish

    return deploy_publish()


@pytest.fixture(scope="module")
def hook_model(platform):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import register

    return register(
        ModelConfig(owner="hooks", title="Tagged", repo_url=f"git@github.com:{MODEL_REPO}.git")
    )


@pytest.fixture(scope="module")
def receiver(github, webhook_secret, publish_deployment, hook_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("webhook")
    env = {
        "CS_WEBHOOK_PUBLISH_REPO": PUBLISH_REPO,
        "CS_WEBHOOK_DB_PATH": str(folder / "deliveries.sqlite3"),
        "CS_WEBHOOK_MAX_BODY_BYTES": str(64 * 1024),
        "CS_GITHUB_API_URL": github.url,
    }
    proc, url = start_receiver(env, folder / "receiver.log")
    yield url
    stop_receiver(proc)
    log = (folder / "receiver.log").read_text()
    assert webhook_secret not in log and github.token not in log


def test_signed_tag_push_starts_exactly_one_publish_run(
    receiver, webhook_secret, publish_deployment
):
    sha, delivery = new_sha(), "d-" + new_sha()[:20]
    response = deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, "v7", sha), delivery)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    assert webhook_secret not in response.text

    (run,) = wait_for_runs(publish_deployment, sha)
    assert run.parameters == {
        "owner": "hooks",
        "title": "Tagged",
        "tag": "v7",
        "steps": "all",
        "sha": sha,
        "repo": MODEL_REPO,
    }

    # The same delivery again (GitHub's "Redeliver"): acknowledged, nothing new.
    again = deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, "v7", sha), delivery)
    assert again.status_code == 202 and again.json()["reason"] == "duplicate delivery"
    time.sleep(SETTLE_SECONDS)
    assert len(runs_with_sha(publish_deployment, sha)) == 1


def test_forged_unsigned_oversized_and_malformed_deliveries_start_nothing(
    receiver, webhook_secret, publish_deployment
):
    bad = {name: new_sha() for name in ("forged", "unsigned", "oversized", "malformed")}
    forged = deliver(receiver, "not-the-secret", "push", tag_push(MODEL_REPO, "v8", bad["forged"]))
    unsigned = deliver(receiver, None, "push", tag_push(MODEL_REPO, "v8", bad["unsigned"]))
    big = tag_push(MODEL_REPO, "v8", bad["oversized"]) | {"padding": "x" * 70_000}
    oversized = deliver(receiver, webhook_secret, "push", big)
    malformed = deliver(
        receiver,
        webhook_secret,
        "push",
        None,
        body=b'{"ref": "refs/tags/v8", ' + bad["malformed"].encode(),
    )
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert oversized.status_code == 413
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]

    # A valid delivery after them is the positive control: once its run exists,
    # runs the bad ones could have started would exist too (give them a settle time).
    control = new_sha()
    assert (
        deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, "v8", control)).status_code
        == 202
    )
    wait_for_runs(publish_deployment, control)
    time.sleep(SETTLE_SECONDS)
    for name, sha in bad.items():
        assert runs_with_sha(publish_deployment, sha) == [], name


def test_events_it_does_not_act_on_get_202_with_a_reason(receiver, webhook_secret):
    cases = [
        ("push", {**tag_push(MODEL_REPO, "x", new_sha()), "ref": "refs/heads/main"}, "not a tag"),
        ("push", tag_push("someone/unknown-repo", "v1", new_sha()), "no registered model"),
        ("issues", {"action": "opened"}, "not acted on"),
        ("release", {"action": "created", "release": {"tag_name": "v1"}}, "not 'published'"),
        ("pull_request", pull_request("someone/else", 1, "opened", new_sha()), "not the publish"),
    ]
    for event, payload, reason in cases:
        response = deliver(receiver, webhook_secret, event, payload)
        assert response.status_code == 202, (event, response.text)
        assert reason in response.json()["reason"], (event, response.json())
    assert deliver(receiver, webhook_secret, "ping", {"zen": "hi"}).json() == {"status": "pong"}
    body = b"{}"
    no_delivery = httpx.post(
        receiver + "/github",
        content=body,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature(webhook_secret, body)},
    )
    assert no_delivery.status_code == 400 and "X-GitHub-Delivery" in no_delivery.json()["error"]


def test_pull_request_stages_and_its_merge_promotes(
    receiver, webhook_secret, publish_deployment, github
):
    head, merge, number = new_sha(), new_sha(), 42
    path = "config/hooks/Tagged.yaml"
    github.pr_files[(PUBLISH_REPO, number)] = ["README.md", path, "config/hooks/notes.txt"]
    github.contents[(PUBLISH_REPO, path, head)] = "owner: hooks\ntitle: Tagged\nrepo_tag: v9\n"
    github.contents[(PUBLISH_REPO, path, merge)] = "owner: hooks\ntitle: Tagged\nrepo_tag: v9\n"

    opened = deliver(
        receiver, webhook_secret, "pull_request", pull_request(PUBLISH_REPO, number, "opened", head)
    )
    assert opened.status_code == 202, opened.text
    (staged,) = wait_for_runs(publish_deployment, head)
    assert staged.parameters == {
        "owner": "hooks",
        "title": "Tagged",
        "tag": "v9",
        "steps": "stage",
        "sha": head,
        "repo": PUBLISH_REPO,
    }

    unmerged = pull_request(PUBLISH_REPO, number, "closed", head, merge=None, merged=False)
    assert (
        "asks for nothing"
        in deliver(receiver, webhook_secret, "pull_request", unmerged).json()["reason"]
    )

    merged = pull_request(PUBLISH_REPO, number, "closed", head, merge=merge, merged=True)
    assert deliver(receiver, webhook_secret, "pull_request", merged).status_code == 202
    (promoted,) = wait_for_runs(publish_deployment, merge)
    assert promoted.parameters["steps"] == "promote" and promoted.parameters["tag"] == "v9"
    files_calls = [
        r
        for r in github.requests
        if r.path.startswith(f"/repos/{PUBLISH_REPO}/pulls/{number}/files")
    ]
    assert files_calls and all(
        r.headers["Authorization"] == f"Bearer {github.token}" for r in files_calls
    )


def test_published_release_starts_a_publish_of_its_tag(
    receiver, webhook_secret, publish_deployment
):
    tag = "rel-" + new_sha()[:10]
    payload = {
        "action": "published",
        "release": {"tag_name": tag, "target_commitish": "main"},
        "repository": tag_push(MODEL_REPO, tag, new_sha())["repository"],
    }
    assert deliver(receiver, webhook_secret, "release", payload).status_code == 202
    (run,) = wait_for_runs(publish_deployment, tag=tag)
    # A release names no commit: sha stays None and publish reports on the commit it clones.
    assert run.parameters == {
        "owner": "hooks",
        "title": "Tagged",
        "tag": tag,
        "steps": "all",
        "sha": None,
        "repo": MODEL_REPO,
    }


def test_a_release_of_a_just_pushed_tag_does_not_publish_twice(
    receiver, webhook_secret, publish_deployment
):
    tag, sha = "both-" + new_sha()[:10], new_sha()
    pushed = deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, tag, sha))
    assert pushed.json()["status"] == "accepted"
    release = {
        "action": "published",
        "release": {"tag_name": tag},
        "repository": tag_push(MODEL_REPO, tag, sha)["repository"],
    }
    again = deliver(receiver, webhook_secret, "release", release)
    assert again.status_code == 202 and "already requested" in again.json()["reason"]
    wait_for_runs(publish_deployment, tag=tag)
    time.sleep(SETTLE_SECONDS)
    assert len(runs_with(publish_deployment, tag=tag)) == 1


def test_pull_request_files_unavailable_is_502_and_not_remembered(receiver, webhook_secret):
    payload, delivery = pull_request(PUBLISH_REPO, 404, "opened", new_sha()), "pr-" + new_sha()[:12]
    first = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
    assert first.status_code == 502
    # Not recorded as seen: a redelivery once GitHub answers is acted on, not dropped as a duplicate.
    second = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
    assert second.status_code == 502


def test_delivery_ids_survive_a_restart_and_are_pruned(tmp_path: Path):
    store = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=3600, max_rows=3)
    assert store.claim("a") and not store.claim("a")
    store.close()
    reopened = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=3600, max_rows=3)
    assert reopened.seen("a") and not reopened.claim("a")
    for name in "bcde":
        assert reopened.claim(name)
    reopened.prune()
    assert not reopened.seen("a") and reopened.seen("e")
    reopened.close()
    expired = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=0.0001, max_rows=3)
    time.sleep(0.01)
    expired.prune()
    assert not expired.seen("e")
    assert expired.fresh(["m@v1", "m@v2"], 60) == ["m@v1", "m@v2"]
    assert expired.fresh(["m@v1", "m@v3"], 60) == ["m@v3"]
    assert expired.fresh(["m@v1"], 0) == ["m@v1"]  # window 0: off
    expired.release("x", ["m@v1"])
    assert expired.fresh(["m@v1"], 60) == ["m@v1"]


def test_signature_check_and_url_matching():
    body = b'{"a": 1}'
    good = "sha256=" + __import__("hmac").new(b"k", body, "sha256").hexdigest()
    assert signature_ok("k", body, good)
    assert not signature_ok("k", body + b" ", good)
    assert not signature_ok("k2", body, good)
    assert not signature_ok("k", body, None) and not signature_ok("k", body, "sha1=abc")
    same = {
        "https://github.com/Org/Repo.git",
        "git@github.com:org/repo.git",
        "https://github.com/org/repo/",
        "git://github.com/org/repo.git",
        "ssh://git@github.com/org/repo",
    }
    assert {normalize_repo_url(u) for u in same} == {"github.com/org/repo"}
    assert normalize_repo_url("https://github.com/org/repo2") != "github.com/org/repo"


def test_prefect_yaml_declares_the_same_triggers_as_deploy_publish():
    project = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())
    (publish,) = [d for d in project["deployments"] if d["name"] == "publish"]
    assert publish["triggers"] == PUBLISH_TRIGGERS
    # and `prefect deploy` itself accepts them
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    (trigger,) = _initialize_deployment_triggers("publish", publish["triggers"])
    assert trigger.expect == {"cs.publish.requested"}


def test_publish_deployment_has_the_trigger_automation(publish_deployment):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{publish_deployment}"
        )
    names = [a.name for a in automations]
    assert names.count(PUBLISH_TRIGGERS[0]["name"]) == 1, names
    (automation,) = automations
    assert automation.trigger.expect == {"cs.publish.requested"}
    assert automation.actions[0].parameters == PUBLISH_TRIGGERS[0]["parameters"]


def test_cloud_webhook_template_makes_the_same_event_as_the_receiver():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    sha, delivery = new_sha(), "cloud-delivery-1"
    body = tag_push(MODEL_REPO, "v3", sha)
    rendered = ImmutableSandboxedEnvironment().from_string(
        cloud_webhook_template("hooks", "Tagged")
    )
    event = json.loads(rendered.render(body=body, headers={"x-github-delivery": delivery}))
    ours = PublishRequest("hooks", "Tagged", "v3", "all", delivery, sha=sha, repo=MODEL_REPO)
    assert event["event"] == "cs.publish.requested"
    assert event["resource"] == ours.resource()

    branch = {**body, "ref": "refs/heads/main"}
    other = json.loads(rendered.render(body=branch, headers={"x-github-delivery": delivery}))
    assert other["event"] == "cs.github.ignored"


def test_serve_without_the_secret_fails_clearly(tmp_path, platform):
    cli = Path(sys.executable).parent / "prefect-cs"

    result = subprocess.run(
        [str(cli), "webhook", "serve", "--port", "1"],
        env={**os.environ, "CS_WEBHOOK_SECRET_NAME": "NOT_SET_ANYWHERE"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "secrets set --name NOT_SET_ANYWHERE" in result.stderr
