"""The attacker app against the kernel's bounds, on the process tier's real sandbox and cgroups.

Each attack of examples/attacker-app runs for real in call_model (the path simulate takes) or
a warm process (the inputs path), and each test asserts both that the attack ran and that it
got nothing: a fork bomb stops at `pids`, memory across processes and /dev/shm at the memory
limit, a disk fill at `disk`, each as one FAIL naming the limit and the field to raise; the
bill comes from the cgroup; no process of the call outlives it; a warm process keeps nothing
of one user's call for the next; a nested user namespace is refused; the internet, where
given, does not reach the host's loopback.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid

import pytest
from prefect_cs.runtime import cgroups
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.model_process import call_model
from prefect_cs.runtime.warm import WarmModel
from prefect_cs.testing.model_code import package_venv
from prefect_cs.testing.models import EXAMPLES

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroups.cgroups_problem() is not None,
    reason=f"kernel bounds need root and cgroups: {cgroups.cgroups_problem()}",
)
ATTACKER = EXAMPLES / "attacker-app" / "cs-config" / "cs_config"


@pytest.fixture(scope="module")
def attacker_python() -> str:
    return package_venv(ATTACKER)


def run(python: str, meta: dict, bounds: Bounds, timeout: float = 120, **kwargs):
    from prefect_cs.runtime.environment import runner_for

    return call_model(
        python,
        "run_model",
        [meta, {}],
        timeout=timeout,
        runner=runner_for(python),
        memory_limit_mib=bounds.memory_mib,
        bounds=bounds,
        **kwargs,
    )


def figures(call) -> dict:
    return json.loads(call.result["renderable"][0]["data"])


def test_fork_bomb_stops_at_pids_and_fails_naming_it(attacker_python):
    call = run(attacker_python, {"bound_attack": "fork_bomb"}, Bounds(pids=64, memory_mib=1024))
    assert not call.ok
    assert "64 processes" in call.error and "`pids`" in call.error, call.error


def test_fork_bomb_without_a_pids_bound_would_run_on(attacker_python):
    """Against a bound 4x higher the same attack goes 4x further: what stops it is `pids`."""
    call = run(
        attacker_python,
        {"bound_attack": "fork_bomb", "args": {"limit": 200}},
        Bounds(pids=1024, memory_mib=2048),
    )
    assert call.ok, call.error
    assert figures(call) == {"processes": 200, "stopped_by": None}


def test_memory_across_processes_and_shm_is_one_limit(attacker_python):
    """4 children x 300 MiB + 300 MiB in /dev/shm against 512 MiB: each process is small, the
    sum is not; the kernel kills, the FAIL names the limit, the bill shows what was used."""
    call = run(attacker_python, {"bound_attack": "memory_hog"}, Bounds(memory_mib=512, pids=256))
    assert not call.ok
    assert "memory limit of 512 MiB" in call.error and "`memory`" in call.error, call.error
    assert call.usage is not None and call.usage.peak_memory_mib >= 400, call.usage


def test_disk_fill_stops_at_disk_and_fails_naming_it(attacker_python):
    call = run(
        attacker_python,
        {"bound_attack": "disk_fill"},
        Bounds(memory_mib=1024, pids=256, disk_mib=64),
    )
    assert not call.ok
    assert "disk of 64 MiB" in call.error and "`disk`" in call.error, call.error


def test_bill_counts_every_process_from_the_cgroup(attacker_python):
    """3 children of 100 MiB at once: ru_maxrss would bill one (~100 MiB), the cgroup all."""
    args = {"children": 3, "mib": 100, "shm_mib": 0, "hold": 2}
    call = run(
        attacker_python,
        {"bound_attack": "memory_hog", "args": args},
        Bounds(memory_mib=1024, pids=256),
    )
    assert call.ok, call.error
    assert figures(call)["children"] == 3  # the attack ran as asked
    assert call.usage is not None and call.usage.peak_memory_mib >= 280, call.usage


def test_no_call_leaves_a_cgroup_or_a_process_behind(attacker_python, monkeypatch):
    made = []
    create = cgroups.CallCgroup.create

    def recorded(name, limits):
        made.append(create(name, limits))
        return made[-1]

    monkeypatch.setattr(cgroups.CallCgroup, "create", recorded)
    call = run(attacker_python, {"bound_attack": "fork_bomb"}, Bounds(pids=32, memory_mib=512))
    assert not call.ok and "`pids`" in call.error  # 30 sleepers were running when it ended
    assert len(made) == 1
    assert [p for p in made[0].paths if p.exists()] == []


def test_nested_user_namespace_is_refused(attacker_python):
    call = run(attacker_python, {"probe": "nested_namespaces"}, Bounds(memory_mib=512, pids=64))
    assert call.ok, call.error
    outcome = figures(call)
    assert outcome["outcome"] == "blocked", outcome  # the probe ran (else "error") and got nothing


class _Listener:
    """A platform service on the host's loopback: it answers whoever connects."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"+OK\r\n")
            conn.close()


def test_internet_does_not_reach_the_hosts_loopback(attacker_python):
    listener = _Listener()
    try:
        meta = {"probe": "redis", "targets": {"redis_port": listener.port}}
        call = run(attacker_python, meta, Bounds(memory_mib=512, pids=64), network=True)
        assert call.ok, call.error
        outcome = figures(call)
        assert outcome["outcome"] == "blocked", outcome
        assert listener.accepted == 0
    finally:
        listener.sock.close()


def test_warm_process_keeps_nothing_between_users(attacker_python):
    """User A's call leaves module state, a thread and files (work folder, /dev/shm); user
    B's call, on the same warm process, finds none of them."""
    from prefect_cs.runtime.environment import runner_for

    warm = WarmModel(
        attacker_python, runner_for(attacker_python), bounds=Bounds(memory_mib=512, pids=64)
    )
    a, b = f"user-a-{uuid.uuid4().hex[:6]}", f"user-b-{uuid.uuid4().hex[:6]}"
    try:
        first = warm.call("validate_inputs", [{}, {"marker": a}, {}], timeout=60)
        second = warm.call("validate_inputs", [{}, {"marker": b}, {}], timeout=60)
    finally:
        warm.stop()
    assert first.ok and second.ok, (first.error, second.error)
    seen = second.result["errors_warnings"]["attack"]["warnings"]["earlier"][0]
    assert "module_state" in seen  # the attack ran and reported
    assert a not in seen, seen


def test_warm_call_over_memory_fails_naming_it_and_the_next_call_works():
    from prefect_cs.testing.model_code import functions_runner, model_python

    functions = (
        "def validate_inputs(meta, adjustment, errors_warnings):\n"
        "    if adjustment.get('hog'):\n"
        "        hog = b'x' * (600 * 1024 * 1024)\n"
        "    return {'errors_warnings': errors_warnings}\n"
    )
    warm = WarmModel(
        model_python(), functions_runner(functions), bounds=Bounds(memory_mib=256, pids=64)
    )
    try:
        hog = warm.call("validate_inputs", [{}, {"hog": True}, {}], timeout=60)
        after = warm.call("validate_inputs", [{}, {}, {}], timeout=60)
    finally:
        warm.stop()
    assert not hog.ok and "memory limit of 256 MiB" in hog.error, hog.error
    assert after.ok, after.error


def test_a_too_deep_answer_is_the_models_failure_not_the_platforms():
    """An answer file nested 100,000 deep: one FAIL naming the model's answer, never a
    RecursionError reported as a platform error."""
    from prefect_cs.testing.model_code import functions_runner, model_python

    functions = (
        "import os, sys\n"
        "def run_model(meta, adjustment):\n"
        "    with open(sys.argv[2], 'w') as answer:\n"
        "        answer.write('[' * 100000 + ']' * 100000)\n"
        "    os._exit(0)  # the runner never writes its own answer over this one\n"
    )
    runner = functions_runner(functions)
    call = call_model(model_python(), "run_model", [{}, {}], timeout=60, runner=runner)
    assert not call.ok and "nested too deep" in call.error, call.error
