"""Which of two tags of a model is older: the one rule the receiver and `promote` share.

A webhook (or an operator asking for it) must never move a model back to an
older tag; `prefect-cs models rollback` is the way back on purpose. The receiver
answers early with this rule (from a registry copy a few seconds old), and
`promote` in flows/publish.py applies it again to the record it is about to
overwrite, under a lock: that second check is the one that holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from packaging.version import InvalidVersion, Version


def tag_version(tag: str) -> Version | None:
    """The tag as a PEP 440 version ('v1.10', '2.0rc1'), or None when it is not one ('stable')."""
    try:
        return Version(tag)
    except InvalidVersion:
        return None


def older_than_promoted(tag: str, promoted: str | None, history: Sequence[str]) -> str | None:
    """How `tag` is older than the promoted tag, or None when it is not (or cannot be told).
    By version when both parse, else by the order tags were first published in (`history`,
    oldest first, as `ModelConfig.published_tags` keeps it); a tag never published is new."""
    if promoted is None or tag == promoted:
        return None
    mine, theirs = tag_version(tag), tag_version(promoted)
    if mine is not None and theirs is not None:
        return "by version order" if mine < theirs else None
    first: dict[str, int] = {}
    for index, name in enumerate(history):
        first.setdefault(name, index)
    if tag in first and promoted in first and first[tag] < first[promoted]:
        return "it was published before it"
    return None


def older_tag_message(name: str, tag: str, promoted: str, how: str) -> str:
    """What the receiver answers and a refused promote says: the rule and the way back."""
    return (
        f"{name}: tag {tag!r} is older than the promoted {promoted!r} ({how}); a webhook"
        " never goes back to an older tag:"
        f" roll back with `prefect-cs models rollback {name} {tag}`"
    )
