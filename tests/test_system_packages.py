"""Apps that need Debian packages, as Compute Studio apps could: C/S ran install.sh as root in
the model's image.

Real parts: the publish flow on a real Prefect server; on the local tier the refusal happens
for real (before install.sh runs) and `system_packages` are checked with the machine's real
dpkg-query; on the docker tier a real `docker build` of examples/apt-app runs its install.sh's
`apt-get install tree` and the config's `system_packages: [ed]` as root against Debian's mirror,
and the app's own tests (in the image) find both programs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import ConfigError, StepFailed
from prefect_cs.core.settings import get_settings
from prefect_cs.registry.configs import read_config
from prefect_cs.testing.models import add_tag, make_repo, publish_model, register_model
from prefect_cs.tiers.base import system_package_lines
from prefect_cs.tiers.docker import DockerTier, apt_install_step, dockerfile
from prefect_cs.tiers.local import LocalTier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MISSING = "cs-no-such-package"


def model(**fields) -> ModelConfig:
    return ModelConfig(owner="tests", title="Apt", repo_url="x", **fields)


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["libgl1", "g++", "libstdc++6", "python3.11", "r-base-core"])
def test_debian_names_are_accepted(name):
    assert model(system_packages=[name, name]).system_packages == [name]


@pytest.mark.parametrize(
    "name",
    ["ed; rm -rf /", "$(id)", "`id`", "-y", "--allow-unauthenticated", "Ed", "e", "ed=1.19-1"]
    + ["libc6:amd64", "ed tree", "ed\ntree", "ed&&id", "../x", "", "x" * 101],
)
def test_anything_else_is_refused_naming_the_rule(name):
    with pytest.raises(ValueError, match="use a Debian package name"):
        model(system_packages=[name])


def test_yaml_maps_the_field_and_refuses_bad_names(tmp_path):
    config = read_config(EXAMPLES / "config" / "examples" / "Apt-Demo.yaml")
    assert config.system_packages == ["ed"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("owner: a\ntitle: b\nrepo_url: x\nsystem_packages: ['ed; curl evil | sh']\n")
    with pytest.raises(
        ConfigError, match="system_packages: .*invalid system package .ed; curl evil"
    ):
        read_config(bad)


def test_the_dockerfile_line_checks_names_again():
    """A config that skipped validation (model_construct) still cannot inject a command."""
    sneaky = ModelConfig.model_construct(system_packages=["ed && curl evil | sh"])
    with pytest.raises(ValueError, match="Debian package name"):
        apt_install_step(sneaky.system_packages)


# ---- what needs root -----------------------------------------------------------------------


def test_system_package_lines_are_found():
    script = (
        "# apt-get install in a comment\npip install apt-get\necho apt install x\n"
        "apt-get update && apt-get install -y libgl1\nsudo apt install ed\n"
        "DEBIAN_FRONTEND=noninteractive apt-get -y install jq\n/usr/bin/dpkg -i x.deb\n"
        "conda install -y numpy; aptitude install tree\n"
    )
    assert system_package_lines(script) == [
        "apt-get update && apt-get install -y libgl1",
        "sudo apt install ed",
        "DEBIAN_FRONTEND=noninteractive apt-get -y install jq",
        "/usr/bin/dpkg -i x.deb",
        "conda install -y numpy; aptitude install tree",
    ]


def test_local_tier_refuses_apt_install_before_running_it(platform, repos, caplog):
    repo = make_repo("apt-app", repos / "apt-local")
    register_model("tests", "Apt-Local", repo, repo_tag="v1")
    state = publish_model("tests", "Apt-Local")
    assert state.is_failed()
    said = caplog.text
    assert "cs-config/install.sh installs system packages" in said
    assert "'apt-get install -y --no-install-recommends tree'" in said
    assert "publish on the docker tier (CS_TIER=docker" in said
    assert "system_packages: [tree]" in said and "sudo apt-get install -y tree" in said
    assert "recommended packages included" in said
    assert "[install.sh]" not in said  # refused before it ran: no venv, no step
    assert not (get_settings().envs_dir / "tests" / "Apt-Local").exists()


def test_local_tier_refuses_apt_in_a_run_override_too():
    config = model(install_override="run: apt-get install -y tree")
    with pytest.raises(StepFailed, match="install_override installs system packages"):
        LocalTier().prepare(config, EXAMPLES / "apt-app")


def test_local_tier_names_missing_system_packages(platform, repos, caplog):
    """With install_override replacing install.sh, system_packages are checked with dpkg-query."""
    repo = make_repo("apt-app", repos / "apt-packages")
    register_model(
        "tests",
        "Apt-Packages",
        repo,
        repo_tag="v1",
        install_override="run: echo an operator installs the packages",
        system_packages=["bash", MISSING],
    )
    state = publish_model("tests", "Apt-Packages")
    assert state.is_failed()
    assert f"not installed on this machine: {MISSING}." in caplog.text
    assert f"sudo apt-get install -y {MISSING}`" in caplog.text
    assert "or publish on the docker tier" in caplog.text


def test_local_tier_accepts_installed_system_packages():
    """bash and coreutils are installed on every Debian machine: the real dpkg-query says so."""
    config = model(install_override="run: true", system_packages=["bash", "coreutils"])
    assert LocalTier().prepare(config, EXAMPLES / "apt-app").name == "cs-config"


# ---- image tiers ---------------------------------------------------------------------------


def test_dockerfile_installs_as_root_before_install_sh():
    text = dockerfile(["ed", "g++"], install_uses_apt=True)
    apt = (
        "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
        " ed g++ && rm -rf /var/lib/apt/lists/*"
    )
    assert text.index(apt) < text.index("COPY install/") < text.index("bash -e ./install.sh")
    install = next(line for line in text.splitlines() if "bash -e ./install.sh" in line)
    assert "apt-get update -q && export DEBIAN_FRONTEND=noninteractive && " in install
    assert "\nUSER " not in text  # every RUN is root's, as in Compute Studio's Dockerfile
    plain = [line for line in dockerfile([], False).splitlines() if not line.startswith("#")]
    assert not [line for line in plain if "apt-get" in line or "{" in line.replace("${", "")]


def test_kubernetes_builds_the_same_image_so_allows_apt_too():
    from prefect_cs.tiers.kubernetes import KubernetesTier

    config = model(system_packages=["cs-no-such-package"])  # installed by the build, not checked
    assert KubernetesTier().prepare(config, EXAMPLES / "apt-app").name == "cs-config"


def test_build_context_renders_the_models_packages(platform):
    tier, config = DockerTier(), model(system_packages=["ed"])
    cs_config = tier.prepare(config, EXAMPLES / "apt-app")  # install.sh's apt line is allowed
    context = tier.build_context(config, cs_config, logging.getLogger("t"))
    try:
        text = (context / "Dockerfile").read_text()
        assert "apt-get install -y -q ed && rm -rf" in text  # recommends too, as install.sh's
        assert "cd /opt/cs/install && apt-get update -q" in text
        assert (
            "apt-get install -y --no-install-recommends tree"
            in (context / "install" / "install.sh").read_text()
        )
    finally:
        shutil.rmtree(context)


@pytest.fixture(scope="module")
def docker_ready(platform):
    from prefect_cs.testing.docker_tier import docker_ready

    with docker_ready():
        yield


def test_docker_tier_runs_apt_as_root_in_the_build(docker_ready, repos):
    """install.sh's `apt-get install tree` (no apt-get update, as C/S apps wrote it) and
    system_packages [ed] are installed in the image; the app's own tests there find both."""
    from prefect_cs.testing.docker_tier import docker_tier

    repo = make_repo("apt-app", repos / "apt-docker")
    register_model("tests", "Apt-Docker", repo, repo_tag="v1", system_packages=["ed"])
    with docker_tier():
        state = publish_model("tests", "Apt-Docker")
    assert state.is_completed(), state.message
    entry = ModelConfig.for_model("tests", "Apt-Docker").published()
    assert entry.tier == "docker" and "@sha256:" in (entry.image or "")

    add_tag(repo, "v2", "no system packages", lambda r: None)
    config = ModelConfig.for_model("tests", "Apt-Docker")
    config.system_packages = []
    config.save_model()
    with docker_tier():
        assert publish_model("tests", "Apt-Docker", "v2").is_failed()  # its test wants ed
