"""The platform's one GitHub client, and the commit statuses publish runs report.

Why one client: the webhook receiver (a pull request's files, a file at a
commit) and publish (commit statuses) talk to the same API with the same
token, base URL and headers; `GitHubClient` holds those once and sends every
call through `prefect_cs.core.http.request`, so retries and error messages are
the same everywhere. The token comes from a prefect-github `GitHubCredentials`
block and is never logged.

A publish started by a push or a pull request reports back where its author
looks: the commit (pending → success/failure, linked to the flow run in the
Prefect UI). `CommitStatus` reports best effort: bounded attempts and
timeouts, every failure logged, never raised, so GitHub being down never
fails a publish.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlparse

import httpx
from prefect_cs.core.errors import CSError
from prefect_cs.core.http import RequestFailed, Retry, request
from prefect_cs.core.settings import GitHubSettings, get_settings

State = Literal["pending", "success", "failure", "error"]
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
SHA_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")
MAX_DESCRIPTION = 140  # GitHub refuses longer descriptions
MAX_PR_FILE_PAGES = 30  # GitHub lists at most 3,000 files of a pull request
PR_FILES_PER_PAGE = 100
# Reads answer a webhook delivery, which GitHub gives up on after 10 s: one try of at most
# CS_GITHUB_TIMEOUT_SECONDS (capped here), and GitHub's redelivery (the receiver answers 502 and
# forgets the delivery) is the retry. The receiver also bounds a delivery's calls in all.
READ_TIMEOUT_CAP = 8.0
READS = Retry(attempts=1, timeout=READ_TIMEOUT_CAP)
STATUS_BACKOFF, STATUS_MAX_DELAY = 1.0, 2.0  # seconds before the 2nd try, and the cap after


def repository_of(repo_url: str) -> str | None:
    """ "owner/name" of a model's registered repo_url (https, ssh, git:// or user@host:path, with
    or without .git), or None for a local path: the only repository a publish reports to,
    whatever a delivery's payload named."""
    url = repo_url.strip()
    if scp := re.match(r"^[\w.-]+@[\w.-]+:(?!//)(.+)$", url):
        path = scp[1]
    elif re.match(r"^(https?|ssh|git)://", url):
        path = urlparse(url).path
    else:
        return None
    name = path.strip("/").removesuffix(".git")
    return name if REPO_RE.fullmatch(name) else None


def status_context(base: str, owner: str, title: str) -> str:
    """One context per model (`prefect-cs/publish/OWNER/TITLE`): several models of one
    repository or pull request each keep their own status instead of the last one winning."""
    return f"{base}/{owner}/{title}"


def get_github_settings() -> GitHubSettings:
    """The `github` branch of the settings tree (core/settings.py), read afresh."""
    return get_settings().github


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


class GitHubError(CSError, RuntimeError):
    """The GitHub API did not give an answer the platform can use; the message names the call."""


class GitHubClient:
    """The GitHub API calls the platform makes: commit statuses, a PR's files, a file at a ref."""

    def __init__(
        self,
        api_url: str,
        token: str | None,
        *,
        writes: Retry,
        reads: Retry = READS,
        credentials_block: str = "cs-github",
    ) -> None:
        self.api_url, self.token = api_url.rstrip("/"), token
        self.writes, self.reads, self.credentials_block = writes, reads, credentials_block
        self._http = httpx.Client(headers=api_headers(token))

    @classmethod
    def from_settings(cls, settings: GitHubSettings | None = None) -> GitHubClient:
        """API base, retries and the token of the credentials block the settings name."""
        settings = settings or get_github_settings()
        writes = Retry(
            attempts=settings.attempts,
            backoff=STATUS_BACKOFF,
            max_delay=STATUS_MAX_DELAY,
            timeout=settings.timeout_seconds,
        )
        reads = Retry(attempts=1, timeout=min(settings.timeout_seconds, READ_TIMEOUT_CAP))
        return cls(
            settings.api_url,
            github_token(settings),
            writes=writes,
            reads=reads,
            credentials_block=settings.credentials_block,
        )

    def post_status(
        self,
        repo: str,
        sha: str,
        state: State,
        description: str,
        context: str,
        target_url: str | None = None,
    ) -> None:
        """POST /repos/{repo}/statuses/{sha}; RequestFailed when GitHub did not accept it."""
        body = {"state": state, "description": description[:MAX_DESCRIPTION], "context": context}
        if target_url:
            body["target_url"] = target_url
        url = f"{self.api_url}/repos/{repo}/statuses/{sha}"
        request("POST", url, self.writes, client=self._http, json=body)

    def pr_files(self, repo: str, number: int) -> list[str]:
        """Names of the files a pull request adds or changes (not removes), MAX_PR_FILE_PAGES at
        most."""
        names: list[str] = []
        for page in range(1, MAX_PR_FILE_PAGES + 1):
            batch = self._get_json(
                f"/repos/{repo}/pulls/{number}/files",
                {"per_page": PR_FILES_PER_PAGE, "page": page},
            )
            names += [f["filename"] for f in batch if f.get("status") != "removed"]
            if len(batch) < PR_FILES_PER_PAGE:
                break
        return names

    def pull_request(self, repo: str, number: int) -> dict[str, Any]:
        """GET /repos/{repo}/pulls/{number}: GitHub's own word on its state, `merged` and
        `merge_commit_sha` (a delivery's payload is only what its signer wrote)."""
        data = self._get_json(f"/repos/{repo}/pulls/{number}", {})
        if not isinstance(data, dict):
            raise GitHubError(f"GitHub API pull request {repo}#{number}: unexpected answer")
        return data

    def file_at(self, repo: str, path: str, ref: str) -> str:
        """The text of `path` at commit/branch/tag `ref`."""
        data = self._get_json(f"/repos/{repo}/contents/{quote(path)}", {"ref": ref})
        try:
            return base64.b64decode(data["content"]).decode()
        except (KeyError, TypeError, ValueError) as exc:
            raise GitHubError(f"GitHub API contents of {path}: unexpected answer") from exc

    def _get_json(self, path: str, params: dict[str, Any]) -> Any:
        url = f"{self.api_url}{path}"
        try:
            response = request("GET", url, self.reads, client=self._http, params=params)
        except RequestFailed as exc:
            raise GitHubError(f"GitHub API {path}: {exc.reason}{self._hint(exc.status)}") from exc
        if response.status_code != 200:
            raise GitHubError(f"GitHub API {path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise GitHubError(f"GitHub API {path}: answer is not JSON") from exc

    def _hint(self, status: int | None) -> str:
        if status in (401, 403, 404):
            return (
                f" (can the token of GitHubCredentials block {self.credentials_block!r}"
                " read this repository?)"
            )
        if status is None:
            return f" (is {self.api_url} reachable? CS_GITHUB_API_URL sets it)"
        return ""

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class CommitStatus:
    """The commit a publish reports to; inert when repo or sha is unknown."""

    repo: str | None
    sha: str | None
    target_url: str | None
    logger: logging.Logger | logging.LoggerAdapter
    settings: GitHubSettings | None = None
    context: str | None = None  # default: CS_GITHUB_STATUS_CONTEXT

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
        repo, sha = self.repo or "", self.sha or ""
        if not REPO_RE.match(repo) or not SHA_RE.match(sha):
            self.logger.warning(
                "commit status not reported: repo %r / sha %r look wrong", self.repo, self.sha
            )
            return False
        with GitHubClient.from_settings(settings) as github:
            if github.token is None:
                self.logger.warning(
                    "commit status not reported: no GitHubCredentials block %r with a token",
                    settings.credentials_block,
                )
                return False
            try:
                github.post_status(
                    repo,
                    sha,
                    state,
                    description,
                    self.context or settings.status_context,
                    self.target_url,
                )
            except RequestFailed as exc:
                self.logger.warning(
                    "commit status %s for %s@%s not reported: %s", state, repo, sha, exc
                )
                return False
        self.logger.info("commit status %s reported on %s@%s", state, repo, sha[:12])
        return True


def _why(exc: BaseException) -> str:
    """The error's type and message: httpx messages name the URL, never the headers."""
    return f"{type(exc).__name__}: {exc}"[:300]
