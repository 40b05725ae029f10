"""How deep JSON nests, measured without recursion, before anything recursive reads it.

Python's json module, Prefect's parameter handling and pydantic each recurse once per
level of nesting: a body nested 100,000 levels raised RecursionError inside the cluster
API (answered 503 "platform error … retry", so the caller retried its own mistake), and
a 900-deep adjustment was acknowledged and then failed its simulation as the platform's
fault. So the depth is measured first, in passes that run at C speed over the text
(strings cut out by one regular expression, the brackets left summed as a running
total), or over Python values with an explicit stack, and anything deeper than
CS_LIMITS_JSON_DEPTH is the caller's error naming the limit: a 400 from the API and
the webhook receiver, one FAIL naming the input in the simulate and parse flows.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from prefect_cs.core.errors import TooDeep

SETTING = "CS_LIMITS_JSON_DEPTH"
# A string, its closing quote optional: an unterminated one runs to the end in the same one
# match, so every character is looked at once (possessive: no backtracking either).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def text_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (0 for a scalar); brackets
    inside strings do not count. Malformed text gets a number too (json.loads refuses it)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def value_depth(value: Any) -> int:
    """The same for a Python value (dicts, lists and tuples), walked with an explicit stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def too_deep(what: str, depth: int, limit: int) -> TooDeep:
    return TooDeep(
        f"{what} is nested {depth:,} levels deep, over the limit of {limit} ({SETTING}):"
        f" send flatter JSON, or raise {SETTING} on the cluster"
    )


def check_depth(what: str, value: Any, limit: int) -> Any:
    """`value` itself, or TooDeep naming `what` (e.g. "your adjustment"), its depth and the
    limit."""
    depth = value_depth(value)
    if depth > limit:
        raise too_deep(what, depth, limit)
    return value


def check_inputs(meta_param_dict: Any, adjustment: Any, limit: int) -> None:
    """TooDeep naming the user's input when a simulation's or parse's inputs nest past `limit`."""
    check_depth("your meta parameters (meta_param_dict)", meta_param_dict, limit)
    check_depth("your adjustment", adjustment, limit)


def loads(data: bytes | str, limit: int, what: str = "the request body") -> Any:
    """json.loads, after checking the depth: TooDeep past `limit`, ValueError if not JSON
    (UnicodeDecodeError for bytes that are no UTF-8/16/32, as json.loads itself)."""
    text = (
        data if isinstance(data, str) else data.decode(json.detect_encoding(data), "surrogatepass")
    )
    depth = text_depth(text)
    if depth > limit:
        raise too_deep(what, depth, limit)
    try:
        return json.loads(text)
    except RecursionError as exc:  # a limit set above what this interpreter's stack allows
        raise too_deep(what, depth, limit) from exc
