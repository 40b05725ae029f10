"""The cluster API's pending queues (parse, sim): acknowledged at once, started behind, none lost.

Real files and threads; the submitter is a recording function here (the API's
tests drive the real one, a Prefect background task, end to end).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from prefect_cs.services.pending_queue import PendingQueue

ATTEMPTS = 3


class Recorder:
    def __init__(self, failures: int = 0) -> None:
        self.submitted: list[dict] = []
        self.failed: list[tuple[dict, str]] = []
        self.failures, self.calls = failures, 0
        self.done = threading.Event()

    def submit(self, request: dict) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("Prefect server went away")
        self.submitted.append(request)
        self.done.set()

    def fail(self, request: dict, reason: str) -> None:
        self.failed.append((request, reason))
        self.done.set()


def pending_queue(tmp_path: Path, submit, fail) -> PendingQueue:
    return PendingQueue("parse", tmp_path / "pending", submit, fail, attempts=ATTEMPTS)


def request() -> dict:
    return {"task_id": str(uuid.uuid4()), "owner": "o", "title": "t", "inputs": [{}, {}]}


def drained(folder: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while list(folder.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not list(folder.glob("*.json"))


def test_a_request_is_submitted_once_and_a_retried_post_is_not(tmp_path):
    rec = Recorder()
    parses = pending_queue(tmp_path, rec.submit, rec.fail)
    parses.start()
    try:
        req = request()
        assert parses.add(req) is True
        assert rec.done.wait(10) and drained(tmp_path / "pending")
        assert parses.add(req) is False  # the web app's retry after the answer
        time.sleep(0.3)
        assert rec.submitted == [req] and rec.failed == []
    finally:
        parses.stop()


def test_a_pending_request_is_kept_private_until_submitted(tmp_path):
    rec = Recorder()
    parses = pending_queue(tmp_path, rec.submit, rec.fail)  # not started: nothing drains
    req = request()
    parses.add(req)
    kept = tmp_path / "pending" / f"{req['task_id']}.json"
    assert json.loads(kept.read_text()) == req
    assert kept.stat().st_mode & 0o777 == 0o600
    assert parses.add(req) is False  # still pending: a retry adds nothing


def test_requests_a_crash_left_are_submitted_at_start(tmp_path):
    left = request()
    pending_queue(tmp_path, Recorder().submit, Recorder().fail).add(left)  # then "crash"
    rec = Recorder()
    again = pending_queue(tmp_path, rec.submit, rec.fail)
    assert again.start() == 1
    try:
        assert rec.done.wait(10) and drained(tmp_path / "pending")
        assert rec.submitted == [left]
    finally:
        again.stop()


def test_a_transient_error_is_retried(tmp_path):
    rec = Recorder(failures=ATTEMPTS - 1)
    parses = pending_queue(tmp_path, rec.submit, rec.fail)
    parses.start()
    try:
        parses.add(req := request())
        assert rec.done.wait(20) and drained(tmp_path / "pending")
        assert rec.submitted == [req] and rec.failed == []
    finally:
        parses.stop()


def test_a_request_that_cannot_be_submitted_is_answered_with_a_platform_fail(tmp_path):
    rec = Recorder(failures=ATTEMPTS)
    parses = pending_queue(tmp_path, rec.submit, rec.fail)
    parses.start()
    try:
        parses.add(req := request())
        assert rec.done.wait(20) and drained(tmp_path / "pending")
        assert rec.submitted == [] and len(rec.failed) == 1
        failed, reason = rec.failed[0]
        assert failed == req
        assert "platform error" in reason and "Prefect server went away" in reason
    finally:
        parses.stop()
