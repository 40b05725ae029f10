"""Commit statuses on GitHub for publish runs started from a repository.

A publish started by a push or a pull request reports back where its author
looks: the commit (pending → success/failure, linked to the flow run in the
Prefect UI). Reporting is best effort: bounded attempts and timeouts, every
failure logged, never raised, so GitHub being down never fails a publish.
The token comes from a prefect-github `GitHubCredentials` block and is never
logged.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

State = Literal["pending", "success", "failure", "error"]
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
SHA_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")
MAX_DESCRIPTION = 140  # GitHub refuses longer descriptions


class GitHubSettings(BaseSettings):
    """Where the GitHub API is and which credentials block holds the token (prefix `CS_GITHUB_`)."""

    model_config = SettingsConfigDict(env_prefix="CS_GITHUB_", extra="ignore")

    api_url: str = Field(
        default="https://api.github.com", description="GitHub (Enterprise) API base."
    )
    credentials_block: str = Field(
        default="cs-github", description="Name of a prefect-github GitHubCredentials block."
    )
    status_context: str = "prefect-cs/publish"
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    attempts: int = Field(default=2, ge=1, le=5)


def get_github_settings() -> GitHubSettings:
    return GitHubSettings()


def github_token(settings: GitHubSettings | None = None) -> str | None:
    """The token of the GitHubCredentials block, or None when the block is missing or empty."""
    from prefect_github import GitHubCredentials

    settings = settings or get_github_settings()
    try:
        block = GitHubCredentials.load(settings.credentials_block, _sync=True)
    except ValueError:
        return None
    return block.token.get_secret_value() if block.token else None


def api_headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@dataclass
class CommitStatus:
    """The commit a publish reports to; inert when repo or sha is unknown."""

    repo: str | None
    sha: str | None
    target_url: str | None
    logger: logging.Logger | logging.LoggerAdapter
    settings: GitHubSettings | None = None

    @property
    def active(self) -> bool:
        return bool(self.repo and self.sha)

    def report(self, state: State, description: str) -> bool:
        """POST the status; True when GitHub accepted it. Never raises."""
        if not self.active:
            return False
        try:
            return self._post(state, description)
        except Exception as exc:  # reporting must never fail the publish
            self.logger.warning(
                "commit status %s for %s@%s not reported: %s", state, self.repo, self.sha, _why(exc)
            )
            return False

    def _post(self, state: State, description: str) -> bool:
        settings = self.settings or get_github_settings()
        if not REPO_RE.match(self.repo or "") or not SHA_RE.match(self.sha or ""):
            self.logger.warning(
                "commit status not reported: repo %r / sha %r look wrong", self.repo, self.sha
            )
            return False
        token = github_token(settings)
        if token is None:
            self.logger.warning(
                "commit status not reported: no GitHubCredentials block %r with a token",
                settings.credentials_block,
            )
            return False
        body = {
            "state": state,
            "description": description[:MAX_DESCRIPTION],
            "context": settings.status_context,
        }
        if self.target_url:
            body["target_url"] = self.target_url
        url = f"{settings.api_url.rstrip('/')}/repos/{self.repo}/statuses/{self.sha}"
        last = "no attempt"
        for attempt in range(settings.attempts):
            if attempt:
                time.sleep(min(2.0, 0.5 * 2**attempt))
            try:
                response = httpx.post(
                    url, json=body, headers=api_headers(token), timeout=settings.timeout_seconds
                )
            except httpx.HTTPError as exc:
                last = _why(exc)
                continue
            if response.status_code < 300:
                self.logger.info(
                    "commit status %s reported on %s@%s", state, self.repo, self.sha[:12]
                )
                return True
            last = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # a 4xx will not get better by retrying
        self.logger.warning(
            "commit status %s for %s@%s not reported: %s", state, self.repo, self.sha, last
        )
        return False


def _why(exc: BaseException) -> str:
    """The error's type and message: httpx messages name the URL, never the headers."""
    return f"{type(exc).__name__}: {exc}"[:300]
