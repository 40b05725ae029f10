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
from prefect_cs.core.tag_order import older_than_promoted
from prefect_cs.deployments.triggers import (
    PUBLISH_TRIGGERS,
    PublishRequest,
    cloud_webhook_template,
)
from prefect_cs.services.webhook.deliveries import DeliveryStore
from prefect_cs.services.webhook.keys import normalize_repo_url
from prefect_cs.services.webhook.signature import signature, signature_ok, well_formed
from prefect_cs.testing.webhooks import (
    deliver,
    new_sha,
    pull_request,
    runs_stay,
    start_receiver,
    stop_receiver,
    tag_push,
    wait_for_runs,
    wait_until,
)

MODEL_REPO = "hooks-org/tagged-model"
PUBLISH_REPO = "hooks-org/cs-publish"
OWN_REPO = "hooks-org/own-key"  # hooks/OwnKey: its own GITHUB_WEBHOOK_SECRET
OTHER_REPO = "hooks-org/other-key"  # hooks/OtherKey: another own key
UNSET_REPO = "hooks-org/unset-key"  # hooks/UnsetKey: declares the key, never sets it
VERSIONED_REPO = "hooks-org/versioned"  # hooks/Versioned: promoted v2.0 (tests set it)


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


def register_hook_model(title: str, repo: str, **fields):
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.registry.configs import register

    config = ModelConfig(
        owner="hooks", title=title, repo_url=f"https://github.com/{repo}", **fields
    )
    return register(config)


@pytest.fixture(scope="module")
def own_keys(platform) -> dict[str, str]:
    """Two models with their own webhook key, one that declares it without setting it."""
    from prefect_cs.security.secrets import get_backend

    keys = {}
    for title, repo in (("OwnKey", OWN_REPO), ("OtherKey", OTHER_REPO)):
        register_hook_model(title, repo, secrets=["GITHUB_WEBHOOK_SECRET"])
        keys[title] = secrets.token_urlsafe(32)
        get_backend(f"hooks/{title}").set("GITHUB_WEBHOOK_SECRET", keys[title])
    register_hook_model("UnsetKey", UNSET_REPO, secrets=["GITHUB_WEBHOOK_SECRET"])
    return keys


@pytest.fixture(scope="module")
def versioned(platform):
    return register_hook_model("Versioned", VERSIONED_REPO)


@pytest.fixture(scope="module")
def receiver(
    github, webhook_secret, publish_deployment, hook_model, own_keys, versioned, tmp_path_factory
):
    folder = tmp_path_factory.mktemp("webhook")
    env = {
        "CS_WEBHOOK_PUBLISH_REPO": PUBLISH_REPO,
        "CS_WEBHOOK_DB_PATH": str(folder / "deliveries.sqlite3"),
        "CS_WEBHOOK_MAX_BODY_BYTES": str(64 * 1024),
        "CS_GITHUB_API_URL": github.url,
        "CS_GITHUB_TIMEOUT_SECONDS": "2",
        # the tests change promoted tags and keys between deliveries: no cached registry
        "CS_WEBHOOK_MODELS_CACHE_SECONDS": "0",
        # the many pushes of hooks/Tagged here are not a flood (strict_receiver tests the limit)
        "CS_WEBHOOK_PUBLISHES_PER_HOUR": "1000",
    }
    proc, url = start_receiver(env, folder / "receiver.log")
    yield url
    stop_receiver(proc)
    log = (folder / "receiver.log").read_text()
    assert webhook_secret not in log and github.token not in log
    assert not any(key in log for key in own_keys.values())


def settled(receiver: str, secret: str, deployment) -> None:
    """A positive control: a push sent now has become a run, so deliveries sent before it have
    reached the server too (what `runs_stay` then checks over a short hold)."""
    control = new_sha()
    response = deliver(
        receiver, secret, "push", tag_push(MODEL_REPO, "control-" + control[:10], control)
    )
    assert response.json()["status"] == "accepted", response.text
    wait_for_runs(deployment, control)


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
        "forward_only": True,
    }

    # The same delivery again (GitHub's "Redeliver"): acknowledged, nothing new.
    again = deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, "v7", sha), delivery)
    assert again.status_code == 202 and again.json()["reason"] == "duplicate delivery"
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 1, sha=sha)


def test_forged_unsigned_oversized_and_malformed_deliveries_start_nothing(
    receiver, webhook_secret, publish_deployment
):
    bad = {name: new_sha() for name in ("forged", "unsigned", "oversized", "malformed")}
    bad |= {f"prefix-{n}": new_sha() for n in (0, 7, 20, 63)}
    forged = deliver(receiver, "not-the-secret", "push", tag_push(MODEL_REPO, "v8", bad["forged"]))
    unsigned = deliver(receiver, None, "push", tag_push(MODEL_REPO, "v8", bad["unsigned"]))
    for cut in (0, 7, 20, 63):  # a prefix of the right signature (0: "sha256=" alone)
        raw = json.dumps(tag_push(MODEL_REPO, "v8", bad[f"prefix-{cut}"])).encode()
        header = signature(webhook_secret, raw)[: len("sha256=") + cut]
        response = httpx.post(
            receiver + "/github",
            content=raw,
            headers={
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"prefix-{cut}-" + new_sha()[:8],
                "X-Hub-Signature-256": header,
            },
        )
        assert response.status_code == 401, (cut, response.text)
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
    for name, sha in bad.items():
        assert runs_stay(publish_deployment, 0, hold=0.3, sha=sha) == [], name


def test_a_body_nested_past_the_limit_is_400_naming_it_not_a_crash(receiver, webhook_secret):
    """The receiver parses before it checks the signature (to find the repository's key): a
    30,000-deep body raised RecursionError there, for anyone who could reach the port."""
    deep = b'{"ref": "refs/tags/v9", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    forged = deliver(receiver, "not-the-secret", "push", None, body=deep)
    signed = deliver(receiver, webhook_secret, "push", None, body=deep)
    assert forged.status_code == 401, forged.text
    assert signed.status_code == 400, signed.text
    assert "nested 30,001 levels deep, over the limit of 100 (CS_LIMITS_JSON_DEPTH)" in signed.text


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
        "repo": MODEL_REPO,  # the model's own repository, where its status goes
        "forward_only": True,
    }

    unmerged = pull_request(PUBLISH_REPO, number, "closed", head, merge=None, merged=False)
    assert (
        "asks for nothing"
        in deliver(receiver, webhook_secret, "pull_request", unmerged).json()["reason"]
    )

    merged = pull_request(PUBLISH_REPO, number, "closed", head, merge=merge, merged=True)
    github.merge(PUBLISH_REPO, number, head, merge)  # what GitHub answers when asked
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
        "forward_only": True,
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
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 1, tag=tag)


def test_pull_request_files_unavailable_is_502_and_not_remembered(receiver, webhook_secret):
    payload, delivery = pull_request(PUBLISH_REPO, 404, "opened", new_sha()), "pr-" + new_sha()[:12]
    first = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
    assert first.status_code == 502
    # Not recorded as seen: a redelivery once GitHub answers is acted on, not dropped as a
    # duplicate.
    second = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
    assert second.status_code == 502


def test_delivery_ids_and_bodies_survive_a_restart_and_are_pruned(tmp_path: Path):
    store = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=3600, max_rows=3)
    assert store.claim("a", "hash-a") is None and store.claim("a") == "duplicate delivery"
    assert "already acted on as delivery a" in store.claim("a2", "hash-a")
    assert not store.seen("a2")  # a refused replay's id is not kept (the claim was atomic)
    store.close()
    reopened = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=3600, max_rows=3)
    assert reopened.seen("a") and reopened.claim("a") == "duplicate delivery"
    assert "duplicate body" in reopened.duplicate("new-id", "hash-a")
    for name in "bcde":
        assert reopened.claim(name, f"hash-{name}") is None
    reopened.prune()  # at most 3 ids and 3 bodies kept, the newest
    assert not reopened.seen("a") and reopened.seen("e")
    assert reopened.duplicate("new-id", "hash-a") is None
    assert reopened.duplicate("new-id", "hash-e") is not None
    reopened.release("e")  # an event that could not be sent: its redelivery is acted on
    assert reopened.duplicate("e", "hash-e") is None
    reopened.close()
    expired = DeliveryStore(tmp_path / "d.sqlite3", retention_seconds=0.0001, max_rows=3)
    # rows older than the retention go at the next prune
    wait_until(lambda: expired.prune() or not expired.seen("d"), what="expired ids pruned")
    assert expired.duplicate("x", "hash-d") is None
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
    for cut in (0, 1, 32, 63):  # prefixes of the right signature, "sha256=" alone first
        assert not signature_ok("k", body, good[: len("sha256=") + cut]), cut
        assert not well_formed(good[: len("sha256=") + cut]), cut
    assert not signature_ok("k", body, good + "0") and not well_formed(good + "0")
    assert well_formed(good) and not well_formed(good.upper()) and not well_formed(None)
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


# ---- per-repository keys, replays, older tags, a GitHub that never answers ----------------


def test_a_repository_with_its_own_key_takes_only_that_key(
    receiver, webhook_secret, own_keys, publish_deployment
):
    own, other = own_keys["OwnKey"], own_keys["OtherKey"]
    refused = {
        "cluster key for a repo with its own": (webhook_secret, OWN_REPO),
        "another model's key": (other, OWN_REPO),
        "own key for another model's repo": (own, OTHER_REPO),
        "own key for a cluster-key repo": (own, MODEL_REPO),
        "cluster key, declared but unset": (webhook_secret, UNSET_REPO),
    }
    shas = {why: new_sha() for why in refused}
    for why, (key, repo) in refused.items():
        response = deliver(receiver, key, "push", tag_push(repo, "v1", shas[why]))
        assert response.status_code == 401, (why, response.text)

    # A payload naming two repositories (html_url of one, clone_url of the other) publishes
    # only the model whose key signed it.
    mixed = tag_push(MODEL_REPO, "v1", new_sha())
    mixed["repository"]["html_url"] = f"https://github.com/{OWN_REPO}"
    response = deliver(receiver, webhook_secret, "push", mixed)
    assert [p["model"] for p in response.json()["publish"]] == ["hooks/Tagged"], response.text

    sha = new_sha()
    accepted = deliver(receiver, own, "push", tag_push(OWN_REPO, "v1", sha))
    assert accepted.status_code == 202 and accepted.json()["status"] == "accepted", accepted.text
    (run,) = wait_for_runs(publish_deployment, sha)
    assert (run.parameters["owner"], run.parameters["title"]) == ("hooks", "OwnKey")
    settled(receiver, webhook_secret, publish_deployment)
    for why, refused_sha in shas.items():
        assert runs_stay(publish_deployment, 0, hold=0.2, sha=refused_sha) == [], why


def test_a_replayed_body_under_a_new_delivery_id_is_acknowledged_and_ignored(
    receiver, webhook_secret, publish_deployment
):
    sha = new_sha()
    body = json.dumps(tag_push(MODEL_REPO, "replayed", sha)).encode()
    first = deliver(receiver, webhook_secret, "push", None, "first-" + sha[:10], body=body)
    assert first.json()["status"] == "accepted", first.text
    # Past the request window the old receiver acted on this again; now the body is remembered.
    replay = deliver(receiver, webhook_secret, "push", None, "replay-" + sha[:10], body=body)
    assert replay.status_code == 202, replay.text
    assert replay.json()["status"] == "ignored"
    assert replay.json()["reason"].startswith("duplicate body"), replay.json()
    assert "first-" + sha[:10] in replay.json()["reason"]
    # GitHub's own redelivery (same id) is still a plain duplicate, never an error.
    redelivery = deliver(receiver, webhook_secret, "push", None, "first-" + sha[:10], body=body)
    assert redelivery.json()["reason"] == "duplicate delivery"
    wait_for_runs(publish_deployment, sha)
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 1, sha=sha)


def promote_for_test(model_title: str, history: list[str], promoted: str) -> None:
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag

    model = ModelConfig.for_model("hooks", model_title)
    model.published_tags = [PublishedTag(tag=t, python="/nonexistent/python") for t in history]
    model.latest_tag = promoted
    model.save_model()


@pytest.mark.parametrize(
    ("tag", "promoted", "history", "older"),
    [
        ("v1.9", "v1.10", [], True),  # versions, not strings: "v1.9" > "v1.10" as text
        ("v1.10", "v1.9", [], False),
        ("2.0rc1", "2.0", [], True),
        ("v2.0", "v2.0", ["v2.0"], False),  # the same tag again is not older
        ("stable", "v2", ["stable", "v2"], True),  # unparseable: publish order decides
        ("beta", "stable", ["stable"], False),  # never published: new
        ("alpha", "beta", ["beta", "alpha"], False),
        ("v1", None, [], False),  # nothing promoted yet
    ],
)
def test_older_tags_are_told_by_version_else_by_publish_order(tag, promoted, history, older):
    assert (older_than_promoted(tag, promoted, history) is not None) is older


def test_a_webhook_never_promotes_a_tag_older_than_the_promoted_one(
    receiver, webhook_secret, versioned, publish_deployment, github
):
    promote_for_test("Versioned", ["v1.9", "v1.10", "nightly"], "v1.10")
    cases = {"v1.9": "ignored", "v1.2": "ignored", "v1.11": "accepted", "v2.0": "accepted"}
    shas = {tag: new_sha() for tag in cases}
    for tag, status in cases.items():
        response = deliver(
            receiver, webhook_secret, "push", tag_push(VERSIONED_REPO, tag, shas[tag])
        )
        assert response.json()["status"] == status, (tag, response.text)
        if status == "ignored":
            reason = response.json()["reason"]
            assert "older than the promoted 'v1.10'" in reason and "models rollback" in reason

    # Tags that are not versions: the order they were published in.
    promote_for_test("Versioned", ["nightly", "stable"], "stable")
    old, new = new_sha(), new_sha()
    assert (
        "published before"
        in deliver(
            receiver, webhook_secret, "push", tag_push(VERSIONED_REPO, "nightly", old)
        ).json()["reason"]
    )
    assert (
        deliver(
            receiver, webhook_secret, "push", tag_push(VERSIONED_REPO, "brand-new", new)
        ).json()["status"]
        == "accepted"
    )

    # A merged pull request promoting an older tag is refused too; opening it still stages it.
    head, merge, number = new_sha(), new_sha(), 77
    path = "config/hooks/Versioned.yaml"
    github.pr_files[(PUBLISH_REPO, number)] = [path]
    for ref in (head, merge):
        github.contents[(PUBLISH_REPO, path, ref)] = "repo_tag: nightly\n"
    staged = deliver(
        receiver, webhook_secret, "pull_request", pull_request(PUBLISH_REPO, number, "opened", head)
    )
    assert staged.json()["status"] == "accepted", staged.text
    merged = pull_request(PUBLISH_REPO, number, "closed", head, merge=merge, merged=True)
    github.merge(PUBLISH_REPO, number, head, merge)
    refused = deliver(receiver, webhook_secret, "pull_request", merged)
    assert "older than the promoted 'stable'" in refused.json()["reason"], refused.text

    for tag in ("v1.11", "v2.0"):
        wait_for_runs(publish_deployment, shas[tag])
    wait_for_runs(publish_deployment, new)
    settled(receiver, webhook_secret, publish_deployment)
    for sha in (shas["v1.9"], shas["v1.2"], old, merge):
        assert runs_stay(publish_deployment, 0, hold=0.2, sha=sha) == []


def test_a_github_api_that_never_answers_is_a_bounded_502(receiver, webhook_secret, github):
    """The pull request path reads GitHub's API while GitHub waits for the answer: a GitHub
    that accepts the connection and never answers must cost a bounded time and say so."""
    head, number = new_sha(), 78
    github.pr_files[(PUBLISH_REPO, number)] = ["config/hooks/Tagged.yaml"]
    github.contents[(PUBLISH_REPO, "config/hooks/Tagged.yaml", head)] = "repo_tag: v9\n"
    payload, delivery = pull_request(PUBLISH_REPO, number, "opened", head), "hang-" + head[:10]
    files_route = f"/repos/{PUBLISH_REPO}/pulls/{number}/files"
    github.hang()
    try:
        started = time.monotonic()
        response = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
        took = time.monotonic() - started
    finally:
        github.answer_again()
    assert response.status_code == 502, response.text
    assert "Timeout" in response.json()["error"] and files_route in response.json()["error"]
    assert took < 8, took  # CS_GITHUB_TIMEOUT_SECONDS=2 here; GitHub itself waits 10 s
    assert any(r.route == files_route for r in github.requests)  # the hang was reached
    # Not remembered: GitHub's redelivery, once the API answers, is acted on.
    again = deliver(receiver, webhook_secret, "pull_request", payload, delivery)
    assert again.json()["status"] == "accepted", again.text


def test_the_per_repository_key_never_reaches_model_code(platform, own_keys, monkeypatch):
    """Declared for the receiver only: not in the child's secrets (the process and Docker
    tiers'), a Kubernetes Job's env, or the model's Kubernetes Secret."""
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.runtime.environment import declared_secrets
    from prefect_cs.security.secrets import get_backend, model_secret_env
    from prefect_cs.tiers.kubernetes import secret_env

    get_backend("hooks/OwnKey").set("MODEL_TOKEN", "model-token-value")
    model = ModelConfig.for_model("hooks", "OwnKey")
    model.secrets = ["GITHUB_WEBHOOK_SECRET", "MODEL_TOKEN"]
    assert declared_secrets(model) == {"MODEL_TOKEN": "model-token-value"}
    assert model_secret_env("hooks", "OwnKey", model.secrets) == {
        "MODEL_TOKEN": "model-token-value"
    }
    assert [e["name"] for e in secret_env(model)] == ["MODEL_TOKEN"]  # the model container's
    # In a container job only CS_SECRET_<name> variables count, and the key's is never needed.
    monkeypatch.setenv("CS_SECRETS_SOURCE", "env")
    monkeypatch.setenv("CS_SECRET_MODEL_TOKEN", "from-the-job")
    monkeypatch.setenv("CS_SECRET_GITHUB_WEBHOOK_SECRET", own_keys["OwnKey"])
    assert declared_secrets(model) == {"MODEL_TOKEN": "from-the-job"}


# ---- issue 24: act only on what the verified key and GitHub itself vouch for ---------------

RACE_REPO = "hooks-org/race"  # hooks/Race, on the cluster key
PUBLISH_KEY_NAME = "PUBLISH_REPO_WEBHOOK_SECRET"


def test_an_unsigned_body_is_never_parsed_so_it_cannot_crash_the_receiver(receiver, webhook_secret):
    """Before: the receiver parsed the body to find the repository's key, so an unsigned body
    naming a repository URL urlparse cannot read was a 500 with a traceback. Now no key signed
    it: 401, unread. Signed, a body that is no JSON object is a 400 after the signature."""
    crashing = {"ref": "refs/tags/v1", "repository": {"html_url": "http://[not-a-host"}}
    for body in (json.dumps(crashing).encode(), b"[1, 2]", b"\xff\xfe{", b"[" * 50_000):
        response = deliver(receiver, "not-the-secret", "push", None, body=body)
        assert response.status_code == 401, (body[:20], response.status_code, response.text)
    signed = deliver(receiver, webhook_secret, "push", crashing)
    assert signed.status_code == 202 and "no registered model" in signed.json()["reason"]
    not_object = deliver(receiver, webhook_secret, "push", None, body=b"[1, 2]")
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]


def test_the_signature_is_checked_before_the_body_is_parsed(
    platform, webhook_secret, github, monkeypatch, tmp_path
):
    """The receiver app itself, in this process, with parse_payload watched: a forged
    delivery is refused without the body ever reaching the JSON parser."""
    import anyio
    import prefect_cs.services.webhook.app as webhook
    from prefect_cs.core.settings import WebhookSettings

    parsed: list[bytes] = []
    real = webhook.parse_payload
    monkeypatch.setattr(webhook, "parse_payload", lambda body: parsed.append(body) or real(body))
    settings = WebhookSettings(db_path=tmp_path / "d.sqlite3", publishes_per_hour=0)
    transport = httpx.ASGITransport(app=webhook.create_app(settings, secret=webhook_secret))
    body = json.dumps(tag_push(MODEL_REPO, "v1", new_sha())).encode()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "parse-" + new_sha()[:10]}

    async def post(raw: bytes, key: str, event: str = "push") -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            signed = {"X-GitHub-Event": event, "X-Hub-Signature-256": signature(key, raw)}
            return await client.post("/github", content=raw, headers=headers | signed)

    async def attack() -> None:
        forged = await post(body, "not-the-secret")
        assert forged.status_code == 401 and parsed == []
        ping = await post(b"{}", webhook_secret, "ping")
        assert ping.json() == {"status": "pong"} and parsed == [b"{}"]

    anyio.run(attack)


def test_a_status_never_goes_to_the_repository_or_commit_a_payload_names(
    receiver, webhook_secret, publish_deployment
):
    """Before: a push signed with the cluster key for hooks/Tagged but naming the publish
    repository as its full_name made the run report on that repository. Now the run names
    the model's own repository (and the flow reports on the commit it built, see
    tests/test_github_status.py)."""
    sha = new_sha()
    payload = tag_push(MODEL_REPO, "status-" + sha[:8], sha)
    payload["repository"]["full_name"] = PUBLISH_REPO
    response = deliver(receiver, webhook_secret, "push", payload)
    assert response.json()["status"] == "accepted", response.text
    (run,) = wait_for_runs(publish_deployment, sha)
    assert run.parameters["repo"] == MODEL_REPO and run.parameters["forward_only"] is True


def test_a_forged_closed_merged_pull_request_promotes_nothing(
    receiver, webhook_secret, publish_deployment, github, versioned
):
    """A cluster-key holder says "closed, merged" for a pull request GitHub says is open: the
    receiver asks GitHub and promotes nothing; merged for real, it promotes the tag read at
    the merge commit GitHub names, not the one the payload names."""
    number, head, claimed, real = 91, new_sha(), new_sha(), new_sha()
    path = "config/hooks/Versioned.yaml"
    github.pr_files[(PUBLISH_REPO, number)] = [path]
    github.contents[(PUBLISH_REPO, path, claimed)] = "repo_tag: v99.0\n"
    github.contents[(PUBLISH_REPO, path, real)] = "repo_tag: v98.0\n"
    github.pulls[(PUBLISH_REPO, number)] = {"number": number, "state": "open", "merged": False}
    forged = pull_request(PUBLISH_REPO, number, "closed", head, merge=claimed, merged=True)
    response = deliver(receiver, webhook_secret, "pull_request", forged)
    assert response.status_code == 202, response.text
    assert "not merged according to GitHub" in response.json()["reason"], response.text
    asked = [r for r in github.requests if r.route == f"/repos/{PUBLISH_REPO}/pulls/{number}"]
    assert asked and asked[-1].headers["Authorization"] == f"Bearer {github.token}"

    github.merge(PUBLISH_REPO, number, head, real)
    merged = pull_request(PUBLISH_REPO, number, "closed", head, merge=claimed, merged=True)
    merged["pull_request"]["updated_at"] = "later"  # a new body: not a replay
    accepted = deliver(receiver, webhook_secret, "pull_request", merged)
    assert accepted.json()["status"] == "accepted", accepted.text
    (run,) = wait_for_runs(publish_deployment, real)
    assert (run.parameters["tag"], run.parameters["steps"]) == ("v98.0", "promote")
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 0, hold=0.3, sha=claimed)


def test_a_model_with_its_own_key_is_not_published_through_the_publish_repository(
    receiver, webhook_secret, publish_deployment, github, own_keys
):
    """Before: a pull request signed with the cluster key touching config/hooks/OwnKey.yaml
    staged (and, merged, promoted) a model that has its own key. Now it is skipped, named."""
    number, head, merge = 92, new_sha(), new_sha()
    own, shared = "config/hooks/OwnKey.yaml", "config/hooks/Tagged.yaml"
    github.pr_files[(PUBLISH_REPO, number)] = [own, shared]
    for path in (own, shared):
        for ref in (head, merge):
            github.contents[(PUBLISH_REPO, path, ref)] = "repo_tag: v9.1\n"
    opened = deliver(
        receiver, webhook_secret, "pull_request", pull_request(PUBLISH_REPO, number, "opened", head)
    )
    assert [p["model"] for p in opened.json()["publish"]] == ["hooks/Tagged"], opened.text
    assert "hooks/OwnKey has its own webhook key" in opened.json()["skipped"][0]
    github.merge(PUBLISH_REPO, number, head, merge)
    only_own = 93
    github.pr_files[(PUBLISH_REPO, only_own)] = [own]
    github.merge(PUBLISH_REPO, only_own, head, merge)
    merged = pull_request(PUBLISH_REPO, only_own, "closed", head, merge=merge, merged=True)
    response = deliver(receiver, webhook_secret, "pull_request", merged)
    assert response.status_code == 202 and "own webhook key" in response.json()["reason"]
    # signed with the model's own key, the publish repository's pull request is not accepted
    by_own = deliver(receiver, own_keys["OwnKey"], "pull_request", merged)
    assert by_own.status_code == 401, by_own.text
    wait_for_runs(publish_deployment, head, owner="hooks", title="Tagged")
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 0, hold=0.3, owner="hooks", title="OwnKey", sha=head)
    runs_stay(publish_deployment, 0, hold=0.3, owner="hooks", title="OwnKey", sha=merge)


@pytest.mark.parametrize("tag", ["../x", "--upload-pack=x", "x;touch pwned", "a..b", "v1.lock"])
def test_a_tag_check_tag_refuses_is_202_with_the_reason_and_no_run(
    receiver, webhook_secret, publish_deployment, tag
):
    sha = new_sha()
    response = deliver(receiver, webhook_secret, "push", tag_push(MODEL_REPO, tag, sha))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "ignored" and "invalid tag" in response.json()["reason"]
    settled(receiver, webhook_secret, publish_deployment)
    runs_stay(publish_deployment, 0, hold=0.2, sha=sha)


def test_two_tags_pushed_at_once_both_start_forward_only_runs(
    receiver, webhook_secret, publish_deployment, platform
):
    """v3.20 then v3.10, both signed, at once: both may be accepted (nothing promoted yet when
    they arrive), so what keeps v3.10 from ending promoted is the runs' forward_only
    (tests/test_publish.py races two such promotes)."""
    register_hook_model("Race", RACE_REPO)
    shas = {tag: new_sha() for tag in ("v3.20", "v3.10")}
    with httpx.Client() as client:
        answers = [
            deliver(receiver, webhook_secret, "push", tag_push(RACE_REPO, t, s), client=client)
            for t, s in shas.items()
        ]
    assert [a.json()["status"] for a in answers] == ["accepted", "accepted"]
    for sha in shas.values():
        (run,) = wait_for_runs(publish_deployment, sha)
        assert run.parameters["forward_only"] is True


@pytest.fixture(scope="module")
def strict_receiver(github, webhook_secret, publish_deployment, hook_model, tmp_path_factory):
    """A second receiver: 3 publishes per model and hour, and a publish repository with its
    own key (which no model holds)."""
    from prefect_cs.security.secrets import get_backend

    publish_key = secrets.token_urlsafe(32)
    get_backend(None).set(PUBLISH_KEY_NAME, publish_key)
    register_hook_model("Flood", "hooks-org/flood")
    folder = tmp_path_factory.mktemp("strict-webhook")
    env = {
        "CS_WEBHOOK_PUBLISH_REPO": PUBLISH_REPO,
        "CS_WEBHOOK_DB_PATH": str(folder / "deliveries.sqlite3"),
        "CS_GITHUB_API_URL": github.url,
        "CS_WEBHOOK_MODELS_CACHE_SECONDS": "0",
        "CS_WEBHOOK_PUBLISHES_PER_HOUR": "3",
        "CS_WEBHOOK_PUBLISH_REPO_SECRET_NAME": PUBLISH_KEY_NAME,
    }
    proc, url = start_receiver(env, folder / "receiver.log")
    yield url, publish_key
    stop_receiver(proc)
    assert publish_key not in (folder / "receiver.log").read_text()


def test_a_key_holder_cannot_flood_the_pool_past_the_per_model_limit(
    strict_receiver, webhook_secret, publish_deployment
):
    url, _ = strict_receiver
    shas = [new_sha() for _ in range(6)]
    answers = [
        deliver(url, webhook_secret, "push", tag_push("hooks-org/flood", f"f{i}", sha)).json()
        for i, sha in enumerate(shas)
    ]
    assert [a["status"] for a in answers] == ["accepted"] * 3 + ["ignored"] * 3, answers
    assert "CS_WEBHOOK_PUBLISHES_PER_HOUR" in answers[-1]["reason"]
    for sha in shas[:3]:
        wait_for_runs(publish_deployment, sha)
    other = new_sha()  # another model is not limited by this one's flood
    assert (
        deliver(url, webhook_secret, "push", tag_push(MODEL_REPO, "nf", other)).status_code == 202
    )
    wait_for_runs(publish_deployment, other)
    for sha in shas[3:]:
        runs_stay(publish_deployment, 0, hold=0.2, sha=sha)


def test_the_publish_repository_may_have_its_own_key(
    strict_receiver, webhook_secret, publish_deployment, github
):
    url, publish_key = strict_receiver
    number, head = 94, new_sha()
    path = "config/hooks/Tagged.yaml"
    github.pr_files[(PUBLISH_REPO, number)] = [path]
    github.contents[(PUBLISH_REPO, path, head)] = "repo_tag: v9.2\n"
    payload = pull_request(PUBLISH_REPO, number, "opened", head)
    assert deliver(url, webhook_secret, "pull_request", payload).status_code == 401
    accepted = deliver(url, publish_key, "pull_request", payload)
    assert accepted.json()["status"] == "accepted", accepted.text
    wait_for_runs(publish_deployment, head)
    # and the publish repository's key signs for no model's repository
    pushed = deliver(url, publish_key, "push", tag_push(MODEL_REPO, "pk", new_sha()))
    assert pushed.status_code == 401, pushed.text
