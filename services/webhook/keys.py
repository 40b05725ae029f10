"""Which registered model a repository is, and which key must have signed its deliveries.

Keys. One cluster key would let any model owner sign a push "from" another
model's repository. A model may therefore declare its own key, the model
secret `GITHUB_WEBHOOK_SECRET` (`prefect-cs models -n OWNER/TITLE secrets set
--name GITHUB_WEBHOOK_SECRET`); a delivery whose payload names that model's
repository is valid only with that key. Models without one fall back to the
cluster secret, as do deliveries for no model's repository (the publish
repository's pull requests; or the publish repository's own key, the cluster
secret named by `CS_WEBHOOK_PUBLISH_REPO_SECRET_NAME`, when set). The body is
checked against every key the receiver knows (cluster, publish repository,
each model's own) before it is read as anything but bytes; only then is it
parsed, and the payload's repository must need one of the keys that signed
it. A model with its own key is never published by a delivery signed with
another one, the publish repository's pull requests included. A model that
declares the secret without setting it accepts nothing (logged with the fix).
Keys and the model index are cached for `CS_WEBHOOK_MODELS_CACHE_SECONDS`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlparse

import anyio
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.names import WEBHOOK_SECRET
from prefect_cs.services.webhook.signature import signature_ok

logger = logging.getLogger("prefect_cs.webhook")  # one logger for the receiver's parts
CLUSTER, PUBLISH_REPO_KEY = "cluster", "publish-repository"  # labels of the non-model keys


def normalize_repo_url(url: str) -> str:
    """host/owner/name, lowercase: https, ssh (git@host:o/n), git:// and .git forms compare
    equal."""
    url = url.strip()
    scp = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)
    if scp:
        host, path = scp.groups()
    else:
        parsed = urlparse(url if "://" in url else f"https://{url}")
        host, path = parsed.hostname or "", parsed.path
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host}/{path}".lower()


def repository_urls(repository: dict[str, Any]) -> set[str]:
    """The payload's repository URLs, normalized; one that is not a URL at all (urlparse
    raises on 'http://[x') names nothing."""
    keys = ("clone_url", "ssh_url", "html_url", "git_url", "svn_url", "url")
    urls = set()
    for value in (repository.get(k) for k in keys):
        if isinstance(value, str) and value:
            try:
                urls.add(normalize_repo_url(value))
            except ValueError:
                continue
    return urls


class Target(NamedTuple):
    """A registered model a repository's deliveries may be for."""

    owner: str
    title: str
    declares_key: bool = False  # GITHUB_WEBHOOK_SECRET among its declared secrets

    @property
    def name(self) -> str:
        return f"{self.owner}/{self.title}"


class ModelIndex:
    """Registered models by normalized repo URL, cached briefly; a miss refreshes (rate-limited).
    Also their configs (promoted tag, published tags), no older than the cache period: a
    delivery costs no registry read of its own."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._by_url: dict[str, list[Target]] = {}
        self._configs: dict[tuple[str, str], ModelConfig] = {}
        self._loaded = float("-inf")
        self._lock = anyio.Lock()

    async def config(self, owner: str, title: str) -> ModelConfig | None:
        """The model's config as of at most `ttl` seconds ago; None when it is not registered."""
        await self._fresh()
        return self._configs.get((owner, title))

    async def targets(self) -> list[Target]:
        """Every registered model (whose own keys may have signed a delivery)."""
        await self._fresh()
        return sorted({t for found in self._by_url.values() for t in found})

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded > self.ttl:
                    await self._refresh()

    async def models_for(self, urls: set[str]) -> list[Target]:
        found = self._lookup(urls)
        if not found or time.monotonic() - self._loaded > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded > min(self.ttl, 1.0):
                    await self._refresh()
            found = self._lookup(urls)
        return found

    def _lookup(self, urls: set[str]) -> list[Target]:
        return sorted({m for url in urls for m in self._by_url.get(url, [])})

    async def _refresh(self) -> None:
        from prefect_cs.registry.configs import all_models

        models = await anyio.to_thread.run_sync(all_models)
        index: dict[str, list[Target]] = {}
        for model in models:
            target = Target(model.owner, model.title, WEBHOOK_SECRET in model.secrets)
            index.setdefault(normalize_repo_url(model.repo_url), []).append(target)
        self._configs = {(m.owner, m.title): m for m in models}
        self._by_url, self._loaded = index, time.monotonic()


def model_key(owner: str, title: str) -> str | None:
    """The model's own GITHUB_WEBHOOK_SECRET from the secrets backend (model scope only)."""
    from prefect_cs.security.secrets import model_webhook_secret

    return model_webhook_secret(owner, title)


@dataclass
class KeyRing:
    """The key a model's deliveries must be signed with: its own GITHUB_WEBHOOK_SECRET when it
    has one, else the cluster's; None (nothing verifies) when it declares one that is not set."""

    cluster: str
    ttl: float
    lookup: Callable[[str, str], str | None] = model_key
    publish_repo: str | None = None  # the publish repository's own key, if it has one
    _cache: dict[Target, tuple[float, str | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    async def key_for(self, target: Target) -> str | None:
        own = await self._own(target)
        if own is not None:
            return own
        if target.declares_key:
            logger.warning(
                "model %s declares %s but it is not set, so no delivery for its repository is"
                " accepted: `prefect-cs models -n %s secrets set --name %s --stdin`",
                target.name,
                WEBHOOK_SECRET,
                target.name,
                WEBHOOK_SECRET,
            )
            return None
        return self.cluster

    async def signer_of(self, target: Target) -> str | None:
        """The label of the one key that signs for `target`: its name when it has its own key,
        CLUSTER when not, None when it declares one that is not set (nothing signs for it)."""
        key = await self.key_for(target)
        if key is None:
            return None
        return CLUSTER if key is self.cluster else target.name

    async def verified(self, body: bytes, header: str, targets: Sequence[Target]) -> set[str]:
        """Labels of every known key that signed `body` (CLUSTER, PUBLISH_REPO_KEY, model names),
        each distinct key tried once in constant time, before the body is parsed."""
        candidates = [(CLUSTER, self.cluster)]
        if self.publish_repo:
            candidates.append((PUBLISH_REPO_KEY, self.publish_repo))
        for target in targets:
            if (own := await self._own(target)) is not None:
                candidates.append((target.name, own))
        by_key: dict[str, list[str]] = {}
        for label, key in candidates:
            by_key.setdefault(key, []).append(label)
        return {
            label
            for key, labels in by_key.items()
            if signature_ok(key, body, header)
            for label in labels
        }

    async def _own(self, target: Target) -> str | None:
        cached = self._cache.get(target)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        own = await anyio.to_thread.run_sync(self.lookup, target.owner, target.title)
        if len(self._cache) > 10_000:  # bounded: registered models, plus churn
            self._cache.clear()
        self._cache[target] = (time.monotonic(), own)
        return own
