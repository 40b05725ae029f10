"""What the cluster API keeps in memory, so an answer costs no Prefect round trip it can avoid.

Compute Studio's client gives each attempt 1.7 s and the budget is tighter: cached
defaults p95 ≤ 20 ms, a sim or parse acknowledgement p95 ≤ 100 ms. Opening a
Prefect client costs ~50 ms and loading a block another ~20–50 ms, so this keeps:

- one Prefect client for the process (httpx's client is thread-safe);
- each model's config for CS_API_CONFIG_TTL_SECONDS (a tag published meanwhile
  is seen at once: a miss reloads). Past that, the caller is answered from the
  config it has while one thread reads it again behind the answer, so a promote
  is seen within the TTL plus one read. One read at a time per model: a burst
  of fifty arriving as the config expired made fifty reads of a busy server,
  and each waited for them (version p50 0.9 s, in memory);
- each simulate deployment's id (it survives re-deploys; a 404 drops it);
- each published tag's SUCCESS defaults per meta parameters (a tag's code never
  changes, so they never go stale; bounded, least recently used dropped first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import NotFound
from prefect_cs.core.names import check_name, slug

logger = logging.getLogger("prefect_cs.api")


class ModelDirectory:
    """Model configs and deployment ids, read through one long-lived Prefect client."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._client: SyncPrefectClient | None = None
        self._models: dict[str, tuple[float, ModelConfig]] = {}  # read started at, config
        self._reading: dict[str, threading.Lock] = {}
        self._deployments: dict[str, UUID] = {}
        self._lock = threading.Lock()

    def client(self) -> SyncPrefectClient:
        with self._lock:
            if self._client is None:
                self._client = get_client(sync_client=True).__enter__()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.__exit__(None, None, None)
                self._client = None

    def model(self, owner: str, title: str, fresh: bool = False) -> ModelConfig:
        """The model's config, at most `ttl` seconds old (or read since this call when `fresh`)."""
        key = slug(check_name("owner", owner), check_name("title", title))
        called = time.monotonic()
        oldest = called if fresh else called - self.ttl
        if (cached := self._models.get(key)) and cached[0] >= oldest:
            return cached[1]
        if cached and not fresh:
            self._read_behind(owner, title, key)
            return cached[1]
        with self._reading_lock(key):
            if (cached := self._models.get(key)) and cached[0] >= oldest:
                return cached[1]  # read by another caller while this one waited
            started = time.monotonic()
            model = self._read(owner, title, key)
            self._models[key] = (started, model)
            return model

    def _read_behind(self, owner: str, title: str, key: str) -> None:
        """Read the config again in a thread, unless a read is already under way."""
        lock = self._reading_lock(key)
        if not lock.acquire(blocking=False):
            return

        def read() -> None:
            try:
                started = time.monotonic()
                self._models[key] = (started, self._read(owner, title, key))
            except NotFound:
                self._models.pop(key, None)  # deregistered: the next caller reads it (a 404)
            except Exception:  # noqa: BLE001 - kept as it was; the next caller tries again
                logger.warning("reading %s's config again failed", key, exc_info=True)
            finally:
                lock.release()

        threading.Thread(target=read, name=f"config-{key}", daemon=True).start()

    def _reading_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._reading.setdefault(key, threading.Lock())

    def _read(self, owner: str, title: str, key: str) -> ModelConfig:
        try:
            document = self.client().read_block_document_by_name(
                key, ModelConfig.get_block_type_slug()
            )
        except ObjectNotFound as exc:
            raise NotFound(
                f"model {owner}/{title} is not registered: run `prefect-cs models register"
                f" config/{owner}/{title}.yaml`"
            ) from exc
        return ModelConfig._from_block_document(document)

    def published(
        self, owner: str, title: str, tag: str | None
    ) -> tuple[ModelConfig, PublishedTag]:
        """The model and its published `tag` (or promoted one); a miss is checked once afresh,
        so a tag published a moment ago is never refused."""
        model = self.model(owner, title)
        try:
            return model, model.published(tag)
        except NotFound:
            model = self.model(owner, title, fresh=True)
            return model, model.published(tag)

    def deployment_id(self, name: str) -> UUID:
        """Read once, by one caller; the others waiting meanwhile take its answer."""
        if (known := self._deployments.get(name)) is not None:
            return known
        with self._reading_lock(f"deployment:{name}"):
            if name not in self._deployments:
                self._deployments[name] = self.client().read_deployment_by_name(name).id
            return self._deployments[name]

    def forget_deployment(self, name: str) -> None:
        self._deployments.pop(name, None)


class AnswerCache:
    """SUCCESS answers per (model, tag, call, arguments); bounded, least recently used dropped."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._answers: OrderedDict[tuple[str, ...], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: ModelConfig, tag: str, call: str, arguments: Any) -> tuple[str, ...]:
        digest = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()
        return (model.slug, tag, call, digest)

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
            return None

    def put(self, key: tuple[str, ...], answer: dict[str, Any]) -> None:
        if answer.get("status") != "SUCCESS":
            return  # a FAIL may be the platform's hiccup: ask again next time
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)


class SingleFlight:
    """One call per key at a time; callers arriving meanwhile share its future.

    C/S gives each attempt 1.7 s and retries: a defaults call still running when the client
    gave up must not be started again by the retry (two page loads made ten model calls),
    and must finish, so the next try is answered from memory. So the call runs in a thread of
    its own, not the request's, and a caller that stops waiting leaves it running. One API
    process only: across processes the inputs worker's lock (flows/inputs.py) merges them.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()

    def start(self, key: Hashable, call: Callable[..., Any], *args: Any) -> Future[Any]:
        """The future of the call under way for `key`, or of `call(*args)` started now."""
        with self._lock:
            if (flight := self._flights.get(key)) is not None:
                return flight
            flight = self._flights[key] = Future()
            flight.set_running_or_notify_cancel()  # a waiter giving up cannot cancel it
        threading.Thread(
            target=self._fly, args=(key, flight, call, args), name="single-flight", daemon=True
        ).start()
        return flight

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def _fly(
        self, key: Hashable, flight: Future[Any], call: Callable[..., Any], args: tuple
    ) -> None:
        try:
            flight.set_result(call(*args))
        except BaseException as exc:  # noqa: BLE001 - every waiter gets it
            flight.set_exception(exc)
        finally:
            with self._lock:
                self._flights.pop(key, None)
