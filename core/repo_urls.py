"""Which repositories the platform clones: remote git over https, ssh or git://, nothing local.

Publish clones a model's repo_url as the platform's own user (root on the process
tier), and the URL comes from whoever can register a model: an operator's YAML, the
web app's `/sync/`. Git reads far more than remote URLs: a local path or `file://`
clones any folder of the cluster that happens to be a repository (another model's
checkout, the platform's own), `ext::` runs a command, `fd::` reads a descriptor,
plain `http://` can be tampered with on the way. So a repo_url is one of
`https://host/…`, `ssh://host/…`, `git://host/…` or scp-like `user@host:path` (ssh),
unless the operator lists folders in CS_LOCAL_REPO_PREFIXES (the quickstart's and
the tests' sample repositories): then a local path or `file://` URL is accepted when
it resolves (symlinks and `..` followed) to a folder under one of them.

`clone_source` is checked where a URL enters the registry (`models register`,
`/sync/`) and again where it is cloned (flows/publish.py), so a config written some
other way cannot reach git; `git_protocols` is what the clone tells git itself to
allow, a second fence around the same rule. Loading a config does not check it:
changing the setting never breaks the simulations of a model already published.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prefect_cs.core.errors import ConfigError
from prefect_cs.core.names import check_repo_url

REMOTE_SCHEMES = ("https", "ssh", "git")
SETTING = "CS_LOCAL_REPO_PREFIXES"
ACCEPTED = (
    "https://host/owner/repo, ssh://host/owner/repo, git://host/owner/repo or user@host:owner/repo"
)
# scp-like ssh, as git reads it: [user@]host:path, with no '/' before the first ':'
SCP_LIKE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._~+][A-Za-z0-9._~+-]*)@)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<path>[^:].*)$",
    re.DOTALL,
)


def refused(url: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"repo_url {url!r} {problem}: {fix}")


def clone_source(url: str, prefixes: Sequence[Path] = ()) -> str:
    """What git may clone for `url`: the URL itself for a remote repository, `file://` of the
    resolved folder for a local one under `prefixes`; a ConfigError naming the fix otherwise."""
    try:
        check_repo_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if "://" in url:
        return _with_scheme(url, prefixes)
    if "::" in url:
        raise refused(
            url,
            "asks git for a remote helper (transport::address), which runs a program",
            f"use {ACCEPTED}",
        )
    if ":" in url and "/" not in url.partition(":")[0]:
        return _scp_like(url)
    return _local(url, url, prefixes)


def _with_scheme(url: str, prefixes: Sequence[Path]) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise refused(url, "names a file on another host", "use a path on this machine")
        return _local(url, unquote(parts.path), prefixes)
    if scheme == "http":
        raise refused(url, "is plain http (anyone on the way can change the code)", "use https://")
    if scheme not in REMOTE_SCHEMES:
        raise refused(url, f"uses the git transport {scheme!r}", f"use {ACCEPTED}")
    parts = urlsplit(url)
    names = (parts.username or "", parts.hostname or "")
    if not parts.hostname or any(name.startswith("-") for name in names):
        raise refused(
            url, "has no valid host (a host or user may not start with '-')", f"use {ACCEPTED}"
        )
    if any(ch.isspace() for ch in url):
        raise refused(url, "contains whitespace", f"use {ACCEPTED}")
    return url


def _scp_like(url: str) -> str:
    match = SCP_LIKE.fullmatch(url)
    if not match or any(ch.isspace() for ch in url):
        raise refused(
            url,
            "is neither a URL nor a valid user@host:path (scp-like ssh)",
            f"use {ACCEPTED}",
        )
    return url


def _local(url: str, path_text: str, prefixes: Sequence[Path]) -> str:
    """file:// of the resolved folder when it lies under an allowed prefix."""
    if not prefixes:
        raise refused(
            url,
            "is a local path; the platform clones only remote repositories (the clone runs as"
            " the platform's user, and a path could name any folder of the cluster)",
            f"use {ACCEPTED}, or, for sample repositories on this machine, have the operator"
            f" set {SETTING} to the absolute folder holding them",
        )
    path = Path(path_text)
    if not path.is_absolute():
        raise refused(
            url,
            "is a relative path (it would mean another folder in every process)",
            f"give the absolute path, e.g. {str(Path(os.path.abspath(path)))!r}",  # noqa: PTH100
        )
    resolved = Path(os.path.realpath(path))
    for prefix in prefixes:
        allowed = Path(os.path.realpath(prefix))
        if resolved.is_relative_to(allowed):
            return resolved.as_uri()
    listed = ", ".join(str(p) for p in prefixes)
    raise refused(
        url,
        f"resolves to {resolved}, which is not under {SETTING} ({listed})",
        f"move the repository under one of those folders, or add its folder to {SETTING}",
    )


def git_protocols(source: str) -> str:
    """The transports git may use to clone `source` (`a:b:c`, as GIT_ALLOW_PROTOCOL writes
    them): the remote ones, and `file` only for a local source `clone_source` allowed, so a
    redirect or a submodule cannot add another."""
    allowed = list(REMOTE_SCHEMES)
    if source.startswith("file://"):
        allowed.append("file")
    return ":".join(allowed)
