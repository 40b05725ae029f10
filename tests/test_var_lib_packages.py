"""Real apps unchanged on every tier (issue 21, item 6): a declared system package's data under
/var/lib is visible to the sandbox, the model's tests write into their working directory, and a
publish that ends any way but success leaves no environment behind (a killed one: once the
lost-run watcher's sweep has run).

Real parts: the machine's dpkg database (sgml-base is installed on every Debian with xml-core;
its catalog /etc/sgml/catalog links to /var/lib/sgml-base/supercatalog, as texlive's ls-R links
to /var/lib/texmf), bubblewrap, the publish flow on a real Prefect server, a real `docker build`
with apt-get reaching Debian's mirror, and a real SIGTERM and SIGKILL to a publish in its own
process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.system_packages import package_binds, shown_path
from prefect_cs.testing.models import add_tag, make_repo, publish_model, register_model
from prefect_cs.tiers.local import LocalTier, building_marker

SGML = Path("/var/lib/sgml-base")
needs_sgml = pytest.mark.skipif(
    not (SGML / "supercatalog").exists(), reason="sgml-base is not installed here"
)


@needs_sgml
def test_dpkg_names_the_packages_folder_under_var_lib(tmp_path):
    assert package_binds(["sgml-base"], [tmp_path]) == [str(SGML)]
    assert package_binds(["cs-no-such-package"], [tmp_path]) == []


@needs_sgml
def test_a_platform_folder_inside_or_around_is_never_bound():
    assert package_binds(["sgml-base"], [SGML / "x"]) == []  # CS_HOME=/var/lib/sgml-base/x
    assert package_binds(["sgml-base"], [Path("/var/lib")]) == []  # CS_HOME=/var/lib


def test_only_folders_and_files_below_the_package_roots_are_shown():
    assert shown_path(Path("/var/lib"), []) is None  # every service's data
    assert shown_path(Path("/root"), []) is None
    assert shown_path(Path("/var/run/docker.sock"), []) is None
    assert shown_path(Path("/var/lib/cs-no-such-folder"), []) is None
    folder = Path(tempfile.mkdtemp(dir="/var/lib", prefix="cs-test-"))
    try:
        assert shown_path(folder, []) == folder
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(folder / "s"))
            assert shown_path(folder / "s", []) is None
        (folder / "link").symlink_to("/root")
        assert shown_path(folder / "link", []) is None  # resolved: outside the roots
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)


@needs_sgml
def test_process_tier_publishes_an_app_with_var_lib_data(platform, repos):
    """Its tests read /etc/sgml/catalog (→ /var/lib/sgml-base) and write ./Report/; then a
    simulation reads it too."""
    repo = make_repo("var-lib-app", repos / "var-lib-local")
    register_model("tests", "Var-Lib-Local", repo, repo_tag="v1", system_packages=["sgml-base"])
    state = publish_model("tests", "Var-Lib-Local")
    assert state.is_completed(), state.message
    config = ModelConfig.for_model("tests", "Var-Lib-Local")
    entry = config.published()
    assert str(SGML) in entry.sandbox_binds
    assert not building_marker(Path(entry.python).parents[1]).exists()  # registered: no build
    call = LocalTier().call_model(config, entry, "run_model", [{}, {}], {})
    assert call.ok, call.error
    assert "update-catalog" in call.result["renderable"][0]["data"]


def test_docker_tier_publishes_an_app_with_var_lib_data(docker_ready, repos):
    """apt-get installs sgml-base in the image; the tests write ./Report/ in a writable copy."""
    from prefect_cs.testing.docker_tier import docker_tier

    repo = make_repo("var-lib-app", repos / "var-lib-docker")
    register_model("tests", "Var-Lib-Docker", repo, repo_tag="v1", system_packages=["sgml-base"])
    with docker_tier():
        state = publish_model("tests", "Var-Lib-Docker")
    assert state.is_completed(), state.message


HANGING_TEST = "import time\n\n\ndef test_hangs():\n    time.sleep(600)\n"
PUBLISH = (
    "from prefect_cs.testing.models import publish_model\nprint(publish_model({!r}, {!r}).type)\n"
)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_publish_stopped_in_its_tests_leaves_no_venv(platform, repos, how):
    """SIGTERM (what marks a run Crashed) while the model's tests run: the flow discards the new
    venv. SIGKILL gives it no chance: the venv is left (the kill really landed), and the
    lost-run watcher's sweep removes it, its publish process being gone."""
    from prefect_cs.services.lost_runs import sweep_unclaimed_environments

    title = f"Var-Lib-{how.title()}"
    repo = make_repo("var-lib-app", repos / title.lower())
    add_tag(repo, "v2", "a test that hangs", _hanging_test)
    register_model("tests", title, repo, repo_tag="v2")
    envs = get_settings().envs_dir / "tests" / title
    code = PUBLISH.format("tests", title)
    publish = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        _wait_for_tests(publish, envs)
        publish.send_signal(getattr(signal, how))
        publish.wait(timeout=120)
    finally:
        if publish.poll() is None:
            publish.kill()
    if how == "SIGKILL":
        assert [p for p in envs.glob("*/*") if p.is_dir()], "the kill left nothing to sweep"
        sweep_unclaimed_environments()
    assert not [p for p in envs.glob("*/*") if p.is_dir()], "the venv was left behind"
    assert not list(envs.glob("*/*.building")), "its build marker was left behind"


def _hanging_test(repo: Path) -> None:
    (repo / "cs-config" / "cs_config" / "tests" / "test_hangs.py").write_text(HANGING_TEST)


def _wait_for_tests(publish: subprocess.Popen, envs: Path) -> None:
    """Until the venv is sealed (its install steps done) and pytest runs in the sandbox."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert publish.poll() is None, "the publish ended before its tests ran"
        pytest_runs = subprocess.run(
            ["pgrep", "-f", f"{envs}/.*-m pytest"], capture_output=True, check=False
        )
        if pytest_runs.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("the model's tests never started")


@pytest.fixture(scope="module")
def docker_ready(platform):
    from prefect_cs.testing.docker_tier import docker_ready

    with docker_ready():
        yield
