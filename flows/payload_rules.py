"""What Compute Studio's web app stores, as rules on the payloads we send it.

Checked against C/S 1.6's serializers and models (DESIGN, "What the web app
receives"): a `model_version` of null is refused (400), so a finished SUCCESS
would never be recorded; one over 50 characters breaks the web app (500); a FAIL
`traceback` must not be empty and is kept in 8,000 characters; `meta` is a JSON
field stored as it is, and the web app bills by `sum(meta["task_times"])`. The rules
live here, as small functions, so every payload builder applies the same ones.
"""

from __future__ import annotations

import math

MODEL_VERSION_LIMIT = 50
TRACEBACK_LIMIT = 8000
UNKNOWN_VERSION = "unknown"
EMPTY_TRACEBACK = "the model failed without a message (no traceback was produced)"


def model_version(recorded: object) -> str:
    """The version to send: what get_version said when the platform itself asked it at publish
    (PublishedTag.version; a published tag's code never changes), else "unknown" (a tag
    published before versions were recorded). Never what a run reports: the model writes its
    own answer file and can change its module, so a run's version is the model's claim. Never
    null, at most 50 characters (the web app's column)."""
    text = str(recorded).strip() if recorded is not None else ""
    if not text:
        return UNKNOWN_VERSION
    return text if len(text) <= MODEL_VERSION_LIMIT else text[: MODEL_VERSION_LIMIT - 1] + "…"


def fail_traceback(text: str | None) -> str:
    """Never empty; the end kept (where the error is) within the web app's 8,000 characters."""
    if not text or not text.strip():
        return EMPTY_TRACEBACK
    return text if len(text) <= TRACEBACK_LIMIT else "…" + text[-(TRACEBACK_LIMIT - 1) :]


def run_meta(seconds: object, measured: dict[str, float] | None = None) -> dict[str, object]:
    """meta for a result: task_times, the model's run time that the web app bills by (one
    finite, non-negative number, on FAIL too), then what the platform measured (extra keys,
    which the web app keeps as they are)."""
    ok = (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds)
    )
    return {"task_times": [max(float(seconds), 0.0) if ok else 0.0], **(measured or {})}  # type: ignore[arg-type]
