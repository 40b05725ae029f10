"""Makes data strict JSON before it leaves a job, and says what it changed.

Model code returns what Python's json module happily writes (NaN, Infinity) or
reads back (lone surrogates from `\\udc80` escapes), but an HTTP client
encoding strict UTF-8 JSON refuses both: the PUT then raises and the result is
lost. Every payload is passed through `json_safe` first. It walks the data with
an explicit stack, so depth never hits Python's recursion limit.
"""

from __future__ import annotations

import math
import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """Each lone surrogate (unencodable in UTF-8) becomes U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT, text)


class _Report:
    """Counts what was replaced, for a one-line note in the payload."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def notes(self) -> list[str]:
        return [f"{n} {what} replaced" for what, n in self.counts.items()]


def _scalar(value: Any, report: _Report) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        report.add("NaN/Infinity number(s) by null")
        return None
    if isinstance(value, str):
        fixed = replace_surrogates(value)
        if fixed != value:
            report.add("string(s) with a lone surrogate (by U+FFFD)")
        return fixed
    return value


def _fresh(value: Any) -> Any:
    if isinstance(value, dict):
        return {}
    if isinstance(value, list | tuple):
        return []
    return None


def json_safe(data: Any) -> tuple[Any, list[str]]:
    """A copy of `data` that strict JSON (UTF-8, no NaN) accepts, and notes on what was replaced.

    NaN and ±Infinity become null; lone surrogates become U+FFFD (in keys too);
    tuples become lists. Other scalars are kept as they are.
    """
    report = _Report()
    root = _fresh(data)
    if root is None:
        return _scalar(data, report), report.notes()
    stack: list[tuple[Any, Any]] = [(data, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            child = _fresh(value)
            item = _scalar(value, report) if child is None else child
            if isinstance(target, dict):
                target[_scalar(key, report)] = item
            else:
                target.append(item)
            if child is not None:
                stack.append((value, child))
    return root, report.notes()
