"""The sweep of virtualenvs a killed publish left (tiers/local.sweep_unclaimed_environments):
it removes only a build whose publish process, on this host, is gone, never one the registry
names, one still being built, one of another host or one without a marker. Real processes
(a `sleep` killed and reaped gives a dead owner), real folders; the whole path, a publish
SIGKILLed in its tests, is in tests/test_var_lib_packages.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prefect_cs.core.process_owner import owner_gone, process_identity
from prefect_cs.core.settings import get_settings
from prefect_cs.tiers.local import building_marker, sweep_unclaimed_environments


@pytest.fixture
def envs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CS_HOME", str(tmp_path))  # settings are read afresh on each call
    return get_settings().envs_dir


def dead_owner() -> str:
    """The identity of a process that ran on this host and is gone (killed and reaped)."""
    proc = subprocess.Popen(["sleep", "60"])
    owner = process_identity(proc.pid)
    proc.kill()
    proc.wait()
    assert owner and owner_gone(owner)
    return owner


def venv(envs: Path, tag: str, name: str, owner: str | None) -> Path:
    folder = envs / "tests" / "Sweep" / tag / name
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    if owner is not None:
        building_marker(folder).write_text(owner)
    return folder


def test_only_a_build_whose_publish_is_gone_is_removed(envs):
    killed = venv(envs, "v1", "killed", dead_owner())
    building = venv(envs, "v1", "building", process_identity())
    registered = venv(envs, "v2", "registered", dead_owner())  # killed right after registering
    elsewhere = venv(envs, "v2", "elsewhere", "another-host:4242:1")
    unmarked = venv(envs, "v3", "unmarked", None)
    assert sweep_unclaimed_environments({registered}) == [killed]
    assert not killed.exists() and not building_marker(killed).exists()
    for kept in (building, registered, elsewhere, unmarked):
        assert (kept / "bin" / "python").exists(), kept
    assert building_marker(building).exists()
    assert not building_marker(registered).exists()  # named by the registry: no longer a build


def test_a_reused_pid_is_not_its_old_owner():
    """The start time in the identity tells this process from an earlier one with its pid."""
    me = process_identity()
    assert me and not owner_gone(me)
    host, pid, started = me.split(":")
    assert owner_gone(f"{host}:{pid}:{int(started) - 1}")
    assert owner_gone("")  # no owner recorded: not one to keep
