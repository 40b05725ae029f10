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
        """The same shape with secrets masked in every string, dict keys included."""
        if self._pattern is None:
            return data
        if isinstance(data, str):
            return self._pattern.sub(self.mask, data)
        if isinstance(data, dict):
            return {self.scrub(k): self.scrub(v) for k, v in data.items()}
        if isinstance(data, list | tuple | set):
            return type(data)(self.scrub(v) for v in data)
        return data
