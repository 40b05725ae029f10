"""What each run cost (CPU-seconds, peak memory), measured on real processes in the real sandbox.

The model burns its CPU in a subprocess, the case that bubblewrap's own init would hide
from the platform (runtime/usage.py says why), and allocates its memory there too.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from prefect_cs.runtime.model_process import call_model
from prefect_cs.testing.model_code import functions_runner, model_python, model_venv

BURN = (
    "import time\n"
    "started = time.process_time()\n"
    "while time.process_time() - started < 1.0:\n"
    "    pass\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1\n"
)

# run_model waits for a subprocess that burns ~1 CPU-second and touches ~200 MB.
WAITED = f"""
import subprocess, sys

def run_model(meta_param_dict, adjustment):
    subprocess.run([sys.executable, "-c", {BURN!r}], check=True)
    if adjustment.get("fail"):
        raise RuntimeError("failed after the work was done")
    return {{"renderable": [], "downloadable": []}}
"""

# run_model starts the burner and returns without waiting, leaving it to the sandbox to end;
# it returns the burner's CPU-seconds so far, read from /proc (whatever the machine's load).
LEFT_RUNNING = f"""
import subprocess, sys, time

def run_model(meta_param_dict, adjustment):
    burner = subprocess.Popen([sys.executable, "-c", {BURN!r}])
    time.sleep(0.6)
    with open(f"/proc/{{burner.pid}}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks
"""

# run_model spins until stopped at its time limit, printing its CPU-seconds so far.
HANG = """
import time

def run_model(meta_param_dict, adjustment):
    while True:
        print(f"cpu {time.process_time():.3f}", flush=True)
        time.sleep(0.05)
        while time.process_time() % 0.2 > 0.01:
            pass
"""


def call(functions: str, adjustment: dict | None = None, timeout: float = 60):
    runner = functions_runner(functions)
    return call_model(model_python(), "run_model", [{}, adjustment or {}], timeout, runner=runner)


def test_a_subprocess_the_model_waits_for_is_counted():
    done = call(WAITED)
    assert done.ok, done.error
    assert done.usage is not None
    assert done.usage.cpu_seconds >= 0.8, done.usage
    assert done.usage.peak_memory_mib >= 150, done.usage
    assert done.seconds >= 0.8


def test_without_a_pid_namespace_a_waited_subprocess_is_counted_too():
    """CS_SANDBOX=none (and `uid`, which this machine cannot try: its after-call kill would reach
    every process of the uid): no init, the model is the child, wait4 counts what it waited for."""
    from prefect_cs.runtime.sandbox import Sandbox

    runner = functions_runner(WAITED)
    done = call_model(
        model_python(), "run_model", [{}, {}], 60, runner=runner, sandbox=Sandbox("none", None)
    )
    assert done.ok, done.error
    assert done.usage is not None and done.usage.cpu_seconds >= 0.8, done.usage
    assert done.usage.peak_memory_mib >= 150, done.usage


def test_a_failed_run_is_measured_too():
    """The web app bills FAIL by task_times: the run time survives the exception."""
    done = call(WAITED, {"fail": True})
    assert not done.ok and "failed after the work was done" in (done.error or "")
    assert done.usage is not None and done.usage.cpu_seconds >= 0.8, done.usage
    assert done.seconds >= 0.8


def test_a_subprocess_left_running_is_counted_until_the_call_ends():
    """Killed when run_model returns, its CPU up to then is still the model's."""
    done = call(LEFT_RUNNING)
    assert done.ok, done.error
    assert done.result > 0.05, "the burner did not run"
    assert done.usage is not None and done.usage.cpu_seconds >= done.result, done.usage


def test_a_model_stopped_at_its_time_limit_is_billed_for_it():
    done = call(HANG, timeout=2)
    assert not done.ok and "time limit of 2 seconds" in (done.error or "")
    assert done.seconds >= 2
    burnt = float(done.output.strip().splitlines()[-1].split()[1])
    assert burnt > 0.1, done.output
    assert done.usage is not None and done.usage.cpu_seconds >= burnt, done.usage


def test_a_crash_keeps_the_run_time():
    """No response file: the run time is the child's life as the platform saw it, not 0."""
    crash = "import os, time\n\ndef run_model(m, a):\n    time.sleep(0.5)\n    os._exit(3)\n"
    done = call(crash)
    assert not done.ok and "exited with code 3" in (done.error or "")
    assert done.seconds >= 0.5


# The same work behind a real simulate flow: a model whose run_model waits for the burner,
# then returns one output, or raises after the work when the adjustment asks it to.
SIMULATED = (
    WAITED.replace(
        'return {"renderable": [], "downloadable": []}',
        'return {"renderable": [{"media_type": "Text", "title": "t", "data": "x"}],'
        ' "downloadable": []}',
    )
    + '\ndef get_version():\n    return "1.0"\n'
)


@pytest.fixture
def billed_model(platform):
    """A model registered with one published tag whose environment runs SIMULATED."""
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag

    title = f"Billed{uuid.uuid4().hex[:8]}"
    entry = PublishedTag(tag="v1", python=model_venv(SIMULATED))
    model = ModelConfig(owner="tests", title=title, repo_url="/x", latest_tag="v1")
    model.record(entry)
    model.save_model()
    return "tests", title


def test_simulate_reports_and_records_the_cost_of_success_and_fail(billed_model, webapp):
    """meta carries the cost on SUCCESS and FAIL (task_times too: the web app bills FAIL by it);
    every run is recorded, and `prefect-cs models usage` totals them."""
    from prefect.artifacts import Artifact
    from prefect_cs.cli.main import app
    from prefect_cs.flows.simulate import simulate
    from typer.testing import CliRunner

    owner, title = billed_model
    since = datetime.now(UTC)
    bodies = {}
    for adjustment in ({}, {"fail": True}):
        task_id = str(uuid.uuid4())
        simulate(owner, title, task_id, {}, adjustment, return_state=True)
        bodies[task_id] = webapp.only_put(task_id)
    for task_id, body in bodies.items():
        meta = body["meta"]
        assert meta["task_times"][0] >= 0.8, body
        assert meta["cpu_seconds"] >= 0.8 and meta["peak_memory_mib"] >= 150, meta
        description = Artifact.get(f"outputs-{task_id}", _sync=True).description
        assert f"CPU {meta['cpu_seconds']:.2f} s" in description
    assert sorted(b["status"] for b in bodies.values()) == ["FAIL", "SUCCESS"]
    fail = next(b for b in bodies.values() if b["status"] == "FAIL")
    assert set(fail) == {"task_id", "status", "meta", "traceback"}  # flows/payloads.py: FAIL keys

    result = CliRunner().invoke(
        app, ["models", "usage", f"{owner}/{title}", "--since", since.isoformat(), "--json"]
    )
    assert result.exit_code == 0, result.output
    totals = json.loads(result.output)
    assert (totals["runs"], totals["failed"]) == (2, 1)
    spent = sum(b["meta"]["cpu_seconds"] for b in bodies.values())
    assert totals["cpu_seconds"] == pytest.approx(spent, abs=0.01) and spent >= 1.6
    assert totals["peak_memory_mib"] >= 150
    later = CliRunner().invoke(
        app, ["models", "usage", f"{owner}/{title}", "--since", "2999-01-01", "--json"]
    )
    assert json.loads(later.output)["runs"] == 0


def test_a_fail_payload_keeps_what_the_model_run_cost():
    """Issue 11: a FAIL used to send task_times [0.0] though the model ran and billing reads it."""
    from prefect_cs.flows.payloads import sim_fail
    from prefect_cs.runtime.model_process import ModelCall
    from prefect_cs.runtime.usage import Usage

    call = ModelCall(ok=False, error="boom", seconds=2.5, usage=Usage(1.25, 210.0))
    sent = sim_fail(str(uuid.uuid4()), "boom", call)
    assert sent["meta"] == {"task_times": [2.5], "cpu_seconds": 1.25, "peak_memory_mib": 210.0}
    never_ran = sim_fail(str(uuid.uuid4()), "no such tag")["meta"]
    assert never_ran == {"task_times": [0.0], "cpu_seconds": 0.0, "peak_memory_mib": 0.0}


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -1.0, None, "3", True])
def test_task_times_is_always_one_finite_non_negative_number(seconds):
    from prefect_cs.flows.payloads import run_meta

    (sent,) = run_meta(seconds)["task_times"]
    assert sent == 0.0


def test_the_init_refuses_to_run_but_as_pid_1(tmp_path):
    """Its sweep kills every process it can see: anywhere but pid 1 of its own namespace it must
    refuse. Tried where a sweep could do no harm: as pid 2 of a sandbox (under bubblewrap's
    init)."""
    import subprocess
    import time

    from prefect_cs.runtime.sandbox import model_sandbox
    from prefect_cs.runtime.usage import measured

    box = model_sandbox()
    if box.mode != "bwrap":
        pytest.skip("needs bubblewrap's pid namespace")
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    argv = box.wrap(measured([model_python(), "-c", "pass"]), work=work, as_pid_1=False)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "runs only as pid 1" in done.stderr, done
    assert time.monotonic() - started < 30
