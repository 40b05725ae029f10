"""Names the platform derives from a model's owner and title (and tags): one place, one rule.

Owner, title and tag end up in paths, block and deployment names, image
references and Kubernetes labels; each of those has its own alphabet, so each
derivation lives here, next to the check that makes it safe.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_RULE = "letters, digits, '-' and '_' only (1 to 64 characters)"


def check_name(kind: str, value: str) -> str:
    """Refuse owner/title values that cannot be used in paths, image names and URLs."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use {NAME_RULE}, e.g. 'PSLmodels' or 'Tax-Brain'"
        )
    return value


def slug(owner: str, title: str) -> str:
    """Block and deployment names allow only lowercase letters, digits and dashes."""
    return f"{owner}-{title}".lower().replace("_", "-")


def image_component(text: str) -> str:
    """Lowercase letters, digits and single dashes: valid in every registry's repository names."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned or "x"


def image_tag(tag: str) -> str:
    """A Docker tag: [A-Za-z0-9_.-], at most 128 characters, starting with a letter, digit or _."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-")
    return (cleaned or "untagged")[:128]


LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(value: str) -> str:
    """A valid Kubernetes label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends."""
    cleaned = LABEL_INVALID.sub("-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
