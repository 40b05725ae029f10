"""What each run cost (CPU-seconds, peak memory), measured on real processes in the real sandbox.

The model burns its CPU in a subprocess, the case that bubblewrap's own init would hide
from the platform (flows/runtime/usage.py says why), and allocates its memory there too.
"""

from __future__ import annotations

from prefect_cs.flows.runtime.model_process import call_model
from prefect_cs.testing.model_code import functions_runner, model_python

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
