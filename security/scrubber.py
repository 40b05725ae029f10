"""Masks secret values in everything that leaves a job: web app payloads, logs, artifacts, files.

A model may print or return a secret it was given; the platform, not the model,
makes sure the value never reaches the web app or the Prefect UI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any


class Scrubber:
    """Replaces every known secret value with `***` in strings and nested JSON-like data.

    Applied to everything sent to the web app, logs and artifacts. Each value is
    also matched in its JSON-escaped form, so a secret with a quote or a
    backslash is caught inside serialized JSON too.
    """

    mask = "***"

    def __init__(self, values: Iterable[str]) -> None:
        variants = set()
        for value in values:
            if value:
                variants |= {value, json.dumps(value)[1:-1]}
        # Longest first, so a secret containing another secret is masked whole.
        ordered = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def for_model(cls, owner: str, title: str, names: Iterable[str]) -> Scrubber:
        from prefect_cs.security.secrets import model_secret_env

        return cls(model_secret_env(owner, title, names).values())

    def __call__(self, data: Any) -> Any:
        return self.scrub(data)

    def scrub(self, data: Any) -> Any:
        """The same shape with secrets masked in every string, dict keys included.

        Walks with an explicit stack, not recursion: a model's output may be nested
        deeper than Python's recursion limit, and a scrubber that raises loses the result.
        """
        if self._pattern is None:
            return data
        root: list[Any] = [None]
        # (source container, where its copy goes: (parent, key)); copies are built bottom-up.
        pending: list[tuple[Any, list[Any] | dict[Any, Any], Any]] = [(data, root, 0)]
        finish: list[tuple[Any, Any, Any, Any]] = []
        while pending:
            source, parent, key = pending.pop()
            if not isinstance(source, dict | list | tuple | set):
                parent[key] = self._scalar(source)
                continue
            items = list(source.items()) if isinstance(source, dict) else list(source)
            slots: list[Any] = [None] * len(items)
            finish.append((source, slots, parent, key))
            for index, item in enumerate(items):
                if isinstance(source, dict):
                    slots[index] = [self._scalar(item[0]), None]
                    pending.append((item[1], slots[index], 1))
                else:
                    pending.append((item, slots, index))
        for source, slots, parent, key in reversed(finish):
            parent[key] = self._rebuild(source, slots)
        return root[0]

    def _scalar(self, value: Any) -> Any:
        return self._pattern.sub(self.mask, value) if isinstance(value, str) else value  # type: ignore[union-attr]

    @staticmethod
    def _rebuild(source: Any, slots: list[Any]) -> Any:
        if isinstance(source, dict):
            return {k: v for k, v in slots}
        return type(source)(slots)
