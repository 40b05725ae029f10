"""Every payload Compute Studio's web app receives from us, built here with its rules applied.

The web app has limits we only learn about when a result is lost (C/S 1.6's serializers and
models; DESIGN, "What the web app receives"): a `model_version` of null is refused (400), so a
finished SUCCESS would never be recorded; one over 50 characters breaks the web app (500); a
FAIL `traceback` must not be empty and is kept in 8,000 characters; `meta` is a JSON field
stored as it is, and the web app bills by `sum(meta["task_times"])`; anything that is not
strict UTF-8 JSON (NaN, a lone surrogate) cannot be sent at all. When every sender built its
own dict, each FAIL had to remember these rules, and some did not. So every payload is built by
one function below, and every sender (the simulate flow, the inputs tasks, the cluster API, the
lost-run watcher) calls it:

| sent to | SUCCESS | FAIL |
|---|---|---|
| PUT /outputs/api/ (a simulation) | `sim_success` | `sim_fail` |
| PUT /inputs/api/ (a parse) | `parse_success` | `parse_fail` |
| the body of a version/defaults answer | `answer_success` | `answer_fail` |

A FAIL comes back already `sendable` (strict JSON, its traceback never empty and cut to the
web app's limit), whoever builds it; a SUCCESS gets `sendable` from its sender (notify.deliver,
the inputs tasks), after secrets are masked, since its outputs can be large.
"""

from __future__ import annotations

import math
from typing import Any

from prefect_cs.core.jsonsafe import json_safe
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.runtime.usage import Usage

MODEL_VERSION_LIMIT = 50
TRACEBACK_LIMIT = 8000
UNKNOWN_VERSION = "unknown"
EMPTY_TRACEBACK = "(no traceback: the failure gave no message; the run's logs may say more)"

# ---- the rules -------------------------------------------------------------------------------


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
    """Never empty (the web app refuses an empty traceback, and the user would be told nothing);
    the end kept (where the error is) within the web app's 8,000 characters."""
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


def sendable(payload: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON; what was replaced is said in the traceback of a FAIL, in meta["replaced"]
    otherwise. A FAIL's traceback is then cut and never empty (`fail_traceback`). Applying it
    twice changes nothing, so a sender may apply it to a payload a builder already made safe."""
    safe, notes = json_safe(payload)
    if safe.get("status") == "FAIL":
        traceback = str(safe.get("traceback") or "")
        if notes:
            traceback += "\n(replaced before sending (not valid JSON): " + "; ".join(notes) + ")"
        safe["traceback"] = fail_traceback(traceback)
    elif notes:
        meta = safe["meta"] if isinstance(safe.get("meta"), dict) else {}
        safe["meta"] = {**meta, "replaced": notes}
    return safe


# ---- simulations: PUT /outputs/api/ ----------------------------------------------------------


def call_meta(call: ModelCall | None) -> dict[str, Any]:
    """What the run cost: the model's run time (task_times), CPU-seconds and peak memory of its
    process tree; zeros where no model process ran."""
    if call is None:
        return run_meta(0.0, Usage().meta())
    return run_meta(call.seconds, (call.usage or Usage()).meta())


def sim_success(
    task_id: str, call: ModelCall, outputs: dict[str, Any], published_version: str | None = None
) -> dict[str, Any]:
    """model_version is the one publish recorded (the platform's own get_version call), never
    `call.version`: the child's answer file is written where the model can write too."""
    return {
        "task_id": task_id,
        "status": "SUCCESS",
        "model_version": model_version(published_version),
        "meta": call_meta(call),
        "outputs": outputs,
        "version": "v1",
    }


def sim_fail(task_id: str, reason: str | None, call: ModelCall | None = None) -> dict[str, Any]:
    """On FAIL the web app reads only these four keys; meta is what the model's run cost, if it
    ran (the web app bills FAIL by task_times too). Used by the flow, and for runs that never
    reported (the cluster API could not start one; the lost-run watcher)."""
    return sendable(
        {
            "task_id": task_id,
            "status": "FAIL",
            "meta": call_meta(call),
            "traceback": fail_traceback(reason),
        }
    )


# ---- parses: PUT /inputs/api/ ----------------------------------------------------------------


def parse_success(task_id: str, outputs: dict[str, Any], seconds: float) -> dict[str, Any]:
    """validate_inputs' answer (`{"errors_warnings", "custom_adjustment"?}`) in the envelope."""
    return {
        "task_id": task_id,
        "status": "SUCCESS",
        "meta": run_meta(seconds),
        "outputs": outputs,
        "version": "v1",
    }


def parse_fail(task_id: str, reason: str | None, seconds: float = 0.0) -> dict[str, Any]:
    """The four keys the web app reads on FAIL; `seconds` is validate_inputs' run time when the
    model ran."""
    return sendable(
        {
            "task_id": task_id,
            "status": "FAIL",
            "meta": run_meta(seconds),
            "traceback": fail_traceback(reason),
        }
    )


# ---- version / defaults: the body of the answer --------------------------------------------


def answer_success(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The function's dict plus status and meta.task_times (the web app reads `version`, or
    `meta_parameters` and `model_parameters`, from it)."""
    return {**result, "status": "SUCCESS", "meta": run_meta(seconds)}


def answer_fail(reason: str | None) -> dict[str, Any]:
    """What the web app reads when version or defaults failed: status, traceback, meta."""
    return sendable({"status": "FAIL", "traceback": fail_traceback(reason), "meta": run_meta(0.0)})
