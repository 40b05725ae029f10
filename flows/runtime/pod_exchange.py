"""The flow's side of a Kubernetes Job's model container: one request, one answer, by file.

Why files in a shared folder: the Job's pod runs the flow (`prefect-job`, the platform's image,
holding the Prefect login) and the model (`model`, the model's image, uid 10001, holding only
its declared secrets) in separate containers with no shared process namespace, so the flow can
neither start nor signal the model's process. What they share is one emptyDir, `exchange`:

- the model container starts with the pod and waits (bounded) for `request.json`
  (flows/runtime/child.py `--wait-for`); the flow writes it atomically (a temporary name, then
  a rename), so the model never reads half a request. It holds the function and its arguments
  only: the model's environment (its secrets) is in the pod spec, never in this file;
- the model answers in `response.json` (child.py writes it under another name and renames it);
  the flow waits for it, bounded by the model's time limit, and reads it as every tier does
  (model_process `_read_response`: no links followed, size-capped, the runner's JSON only);
- a flow that ends without calling the model (it failed before) writes `{"function": null}`
  (`release`), so the model container exits at once and the Job ends with the run.

The flow cannot stop a model that overruns: it reports FAIL naming the time limit and ends;
the Job's activeDeadlineSeconds (time limit + margins) then ends the pod. What the model
printed goes to the model container's log (`kubectl logs … -c model`), not to the flow, and
its CPU and memory are the kubelet's to count, not this process's (ModelCall.usage is None).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect_cs.flows.runtime.model_process import ModelCall, _read_response, _run_seconds

EXCHANGE = "/cs/exchange"  # the emptyDir both containers mount
RUNNER = "/cs/runtime/child.py"  # the platform's runner, copied by the init container
WORK = "/cs/work"  # the model container's writable emptyDir: cwd, HOME, TMPDIR
REQUEST = "request.json"
RESPONSE = "response.json"
ANSWER_GRACE_SECONDS = 30  # the model's interpreter start and import before its run
POLL_SECONDS = 0.1


def write_request(exchange: Path, request: dict[str, Any]) -> None:
    """request.json, whole or not at all: written under a temporary name, then renamed."""
    partial = exchange / f".{REQUEST}.part"
    partial.write_text(json.dumps(request))
    partial.chmod(0o644)  # the model's uid reads it
    os.replace(partial, exchange / REQUEST)


def call_in_pod(
    exchange: Path, function: str, args: list[Any], timeout: float, poll: float = POLL_SECONDS
) -> ModelCall:
    """Ask the pod's model container for `cs_config.functions.<function>(*args)`; wait at most
    `timeout` (the model's time limit) plus a grace for its start. Never raises for the model."""
    if (exchange / REQUEST).exists():
        return ModelCall(
            ok=False,
            error="this Job's model container was already asked once: a Job runs one model call",
        )
    write_request(exchange, {"function": function, "args": args, "with_version": True})
    started = time.perf_counter()
    deadline = time.monotonic() + timeout + ANSWER_GRACE_SECONDS
    response = exchange / RESPONSE
    while not os.path.lexists(response):
        if time.monotonic() > deadline:
            return ModelCall(
                ok=False,
                error=f"the model did not finish within its time limit of {timeout:g} seconds:"
                " its container is stopped by the Job's deadline",
                seconds=time.perf_counter() - started,
            )
        time.sleep(poll)
    lived = time.perf_counter() - started
    call = _read_response(response, 0, None, "")
    call.seconds = _run_seconds(call.seconds, lived)
    return call


def release(exchange: Path | None) -> bool:
    """At the end of a flow in a Job's flow container that has not called the model: tell the
    model container there will be no call (`{"function": null}`), so it exits and the Job ends.
    Whether it wrote the note (False outside a pod, or when the model was called)."""
    if exchange is None or not exchange.is_dir() or (exchange / REQUEST).exists():
        return False
    write_request(exchange, {"function": None})
    return True
