"""What one GitHub event asks for: publish requests, or why it asks for nothing.

Mapping:
- `push` of `refs/tags/T` or `release` published in a model's repository
  → publish that model (found by repository URL in the registry) at T;
- `pull_request` opened/synchronize/reopened in the publish repository
  touching `config/OWNER/TITLE.yaml` → steps="stage" at the tag the PR's file names;
- that pull request closed with merged=true → steps="promote", only once
  GitHub itself says it is merged (`GET /repos/{repo}/pulls/{n}`), reading the
  config at the merge commit GitHub names; the payload's word is not enough.
Each request names the model's own repository for its commit status (the
publish run reports on the commit it built there), never the payload's.
GitHub does not put a PR's changed files in the payload: they are read from
`{CS_GITHUB_API_URL}/repos/{repo}/pulls/{n}/files`, and the file itself from
`/contents/{path}?ref={sha}` (the stand-in in tests, api.github.com otherwise),
through `prefect_cs.core.github.GitHubClient`; when GitHub cannot answer
(an error, or no answer within GITHUB_BUDGET_SECONDS in all), the delivery
gets 502 and is not remembered, so GitHub's redelivery is the retry.
Tags `check_tag` refuses are answered 202 with the reason (policy.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import yaml
from prefect_cs.core.github import SHA_RE, GitHubClient, GitHubError, repository_of
from prefect_cs.core.names import WEBHOOK_SECRET
from prefect_cs.core.settings import WebhookSettings
from prefect_cs.deployments.triggers import PublishRequest
from prefect_cs.services.webhook.keys import CLUSTER, PUBLISH_REPO_KEY, KeyRing, ModelIndex, Target
from prefect_cs.services.webhook.policy import tag_refusal

T = TypeVar("T")


CONFIG_PATH_RE = re.compile(r"^config/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})\.ya?ml$")


PR_STAGE_ACTIONS = {"opened", "synchronize", "reopened"}
GITHUB_BUDGET_SECONDS = 8.0  # all GitHub API calls of one delivery; GitHub gives up after 10 s


class Ignored(Exception):
    """The delivery is valid but asks for nothing: answered 202 with this reason."""


class BadDelivery(Exception):
    """The delivery is signed but unusable: answered 400 with this reason."""


class UpstreamError(Exception):
    """GitHub's API could not tell us what we need: answered 502, nothing recorded."""


class Unsigned(Exception):
    """Signed, but not with the key this delivery needs: answered 401."""


def _dict(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise BadDelivery(f"payload has no {key!r} object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadDelivery(f"payload has no {what}")
    return value


@dataclass
class Planner:
    """Turns one GitHub event into publish requests."""

    settings: WebhookSettings
    models: ModelIndex
    github: GitHubClient
    keys: KeyRing

    async def plan(
        self,
        event: str,
        payload: dict[str, Any],
        delivery: str,
        signed_for: list[Target],
        signers: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[list[PublishRequest], list[str]]:
        """The requests, and why the delivery's other models are skipped. `signed_for`: the
        models of the payload's repository whose key verified the body; `signers`: labels of
        every key that did (KeyRing.verified)."""
        if event == "push":
            tag, sha = self._push_tag(payload), self._push_sha(payload)
            return await self._tag(payload, delivery, signed_for, tag, sha), []
        if event == "release":
            if payload.get("action") != "published":
                raise Ignored(f"release action {payload.get('action')!r} is not 'published'")
            tag = _str(_dict(payload, "release").get("tag_name"), "release.tag_name")
            return await self._tag(payload, delivery, signed_for, tag, None), []
        if event == "pull_request":
            try:
                with anyio.fail_after(GITHUB_BUDGET_SECONDS):
                    return await self._pull_request(payload, delivery, signers)
            except TimeoutError:
                raise UpstreamError(
                    f"GitHub API ({self.github.api_url}) did not answer within"
                    f" {GITHUB_BUDGET_SECONDS:g} s in all; GitHub's redelivery is the retry"
                ) from None
        raise Ignored(f"event {event!r} is not acted on (push of a tag, release, pull_request)")

    @staticmethod
    def _push_tag(payload: dict[str, Any]) -> str:
        ref = _str(payload.get("ref"), "ref")
        if not ref.startswith("refs/tags/"):
            raise Ignored(f"push to {ref} is not a tag")
        if payload.get("deleted"):
            raise Ignored(f"tag {ref} was deleted")
        return ref.removeprefix("refs/tags/")

    @staticmethod
    def _push_sha(payload: dict[str, Any]) -> str | None:
        head = payload.get("head_commit")
        sha = head.get("id") if isinstance(head, dict) else payload.get("after")
        return sha if isinstance(sha, str) and sha.strip("0") else None

    async def _tag(
        self,
        payload: dict[str, Any],
        delivery: str,
        models: list[Target],
        tag: str,
        sha: str | None,
    ) -> list[PublishRequest]:
        repository = _dict(payload, "repository")
        if not models:
            raise Ignored(f"no registered model has repository {repository.get('html_url')!r}")
        if reason := tag_refusal(tag):
            raise Ignored(reason)
        return [
            PublishRequest(
                m.owner, m.title, tag, "all", delivery, sha=sha, repo=await self._own_repo(m)
            )
            for m in models
        ]

    async def _own_repo(self, model: Target) -> str | None:
        """The model's registered repository: where its publish reports (never the payload's)."""
        config = await self.models.config(model.owner, model.title)
        return repository_of(config.repo_url) if config is not None else None

    async def _pull_request(
        self, payload: dict[str, Any], delivery: str, signers: set[str]
    ) -> tuple[list[PublishRequest], list[str]]:
        repository = _dict(payload, "repository")
        full_name = _str(repository.get("full_name"), "repository.full_name")
        if not self.settings.publish_repo:
            raise Ignored("no publish repository configured (CS_WEBHOOK_PUBLISH_REPO)")
        if full_name.lower() != self.settings.publish_repo.lower():
            raise Ignored(f"pull request in {full_name}, not the publish repository")
        needed = PUBLISH_REPO_KEY if self.keys.publish_repo else CLUSTER
        if needed not in signers:
            raise Unsigned(f"pull requests of {full_name} must be signed with the {needed} key")
        pr = _dict(payload, "pull_request")
        action = payload.get("action")
        number = payload.get("number", pr.get("number"))
        if not isinstance(number, int):
            raise BadDelivery("payload has no pull request number")
        if action in PR_STAGE_ACTIONS:
            steps, sha = "stage", _str(_dict(pr, "head").get("sha"), "pull_request.head.sha")
        elif action == "closed" and pr.get("merged") is True:
            steps, sha = "promote", await self._merge_commit(full_name, number)
        else:
            raise Ignored(f"pull request action {action!r} asks for nothing")
        files = await self._github(self.github.pr_files, full_name, number)
        paths = [p for p in files if CONFIG_PATH_RE.match(p)]
        if not paths:
            raise Ignored(f"pull request #{number} changes no config/OWNER/TITLE.yaml")
        requests, skipped = [], []
        for path in paths:
            owner, title = CONFIG_PATH_RE.match(path).groups()  # type: ignore[union-attr]
            if reason := await self._own_key_refusal(owner, title):
                skipped.append(reason)
                continue
            tag = repo_tag_of(await self._github(self.github.file_at, full_name, path, sha), path)
            if reason := tag_refusal(tag):
                skipped.append(f"{owner}/{title}: {reason}")
                continue
            repo = await self._own_repo(Target(owner, title))
            requests.append(PublishRequest(owner, title, tag, steps, delivery, sha=sha, repo=repo))
        if not requests:
            raise Ignored("; ".join(skipped))
        return requests, skipped

    async def _merge_commit(self, repo: str, number: int) -> str:
        """The merge commit GitHub itself names for a merged pull request; Ignored when GitHub
        says it is not merged (a payload claiming so is only its signer's word)."""
        found = await self._github(self.github.pull_request, repo, number)
        sha = found.get("merge_commit_sha")
        if found.get("merged") is not True or not isinstance(sha, str) or not SHA_RE.match(sha):
            raise Ignored(
                f"pull request #{number} of {repo} is not merged according to GitHub"
                " (the delivery said it was): nothing is promoted"
            )
        return sha

    async def _own_key_refusal(self, owner: str, title: str) -> str | None:
        """Why a publish-repository pull request must not publish this model: it has its own
        key, and the pull request was signed with another."""
        config = await self.models.config(owner, title)
        declares = config is not None and WEBHOOK_SECRET in config.secrets
        if await self.keys.signer_of(Target(owner, title, declares)) == CLUSTER:
            return None
        return (
            f"{owner}/{title} has its own webhook key ({WEBHOOK_SECRET}): a publish-repository"
            " pull request, signed with another key, never publishes it; push its tag signed"
            f" with its key, or run `prefect-cs models publish {owner}/{title}`"
        )

    @staticmethod
    async def _github(call: Callable[..., T], *args: Any) -> T:
        """A GitHub client call off the event loop; its failure becomes a 502 (UpstreamError)."""
        try:
            return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True)
        except GitHubError as exc:
            raise UpstreamError(str(exc)) from exc


def repo_tag_of(text: str, path: str) -> str | None:
    """The tag a config file names; None lets publish fall back to the registered repo_tag."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise Ignored(f"{path} is not valid YAML: {exc}") from exc
    tag = data.get("repo_tag") if isinstance(data, dict) else None
    return str(tag) if tag else None
