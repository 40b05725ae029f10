"""The tier abstraction: one tier → pool map, typed job variables that fit the pools' templates,
the same install.sh semantics on the local and Docker tiers, and the platform wheel without a
source checkout."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.testing.model_code import model_folder
from prefect_cs.tiers import Tier, get_tier, tier_for_pool_type
from prefect_cs.tiers.docker import INSTALL_DIR, MODEL_VENV
from prefect_cs.tiers.local import INSTALL_DIR as LOCAL_INSTALL_DIR
from prefect_cs.tiers.local import base_python, uv
from prefect_cs.work_pools.pools import base_job_template

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIERS = {"local": "process", "docker": "process", "kubernetes": "kubernetes"}
LOG = logging.getLogger("test-tiers")


def model(**fields) -> ModelConfig:
    return ModelConfig(owner="tests", title="Tiers", repo_url="/x", **fields)


@pytest.mark.parametrize(("name", "pool_type"), TIERS.items())
def test_one_map_from_tier_to_pool(name, pool_type, monkeypatch):
    tier = get_tier(name)
    assert isinstance(tier, Tier) and (tier.name, tier.pool_type) == (name, pool_type)
    # The Docker tier's flows run on a process pool too (issue 19): the first tier of a type
    # stands for its template.
    assert tier_for_pool_type(pool_type).pool_type == pool_type
    monkeypatch.setenv(f"CS_{tier.pool_setting.upper()}", f"my-{name}-pool")
    assert tier.pool_name == f"my-{name}-pool"


def test_unknown_tier_or_pool_type_names_the_valid_ones():
    with pytest.raises(ValueError, match="local, docker, kubernetes"):
        get_tier("k8s")
    with pytest.raises(ValueError, match="use one of process, kubernetes$"):
        tier_for_pool_type("ecs")


@pytest.mark.parametrize("name", TIERS)
def test_job_variable_fields_are_pool_template_variables(name):
    """Each tier's typed job variables are a subset of its pool's template variables, not equal:
    a deployment sets only what depends on the model and tag (image, limits, secrets, labels);
    what every model shares stays the pool's (docker: auto_remove, stream_output, networks,
    privileged; kubernetes: namespace, service account, node selector, tolerations; task_id is
    set per flow run by the submitter). The process tier sets none at all: the flow finds the
    model's virtualenv from its model config when the run starts."""
    tier = get_tier(name)
    template = base_job_template(tier.pool_type)["variables"]["properties"]
    fields = set(tier.variables_model.model_fields)
    assert fields <= set(template), sorted(fields - set(template))
    if name in ("local", "docker"):
        assert fields == set()


def validate_against_template(tier: Tier, variables: dict) -> None:
    schema = base_job_template(tier.pool_type)["variables"]
    for key, value in variables.items():
        jsonschema.validate(value, {**schema["properties"][key], "$defs": schema.get("$defs", {})})


def test_kubernetes_job_variables_fit_the_kubernetes_template(monkeypatch):
    monkeypatch.setenv("CS_PLATFORM_IMAGE", "r/prefect-cs-platform@sha256:" + "0" * 64)
    tier = get_tier("kubernetes")
    entry = PublishedTag(tag="v1", tier="kubernetes", python="/p", image="r/o_t:v1")
    variables = tier.job_variables(model(cpu=0.5, memory="512Mi", secrets=["API_KEY"]), entry)
    assert set(variables) == set(tier.variables_model.model_fields)
    validate_against_template(tier, variables)


# ---- install.sh runs the same way on every tier ---------------------------------------------

RECORDER = """\
# Records where it runs and what it sees, for tests/test_tiers.py.
{
  echo "cwd=$(pwd)"
  echo "files=$(ls -A | tr '\\n' ' ')"
  echo "prefix=$(python -c 'import sys; print(sys.prefix)')"
  echo "pip=$(command -v pip)"
} > "$VIRTUAL_ENV/install-seen.txt"
"""


def recording_app(dest: Path) -> Path:
    """The misbehaving app with an install.sh that records its surroundings (and a file beside
    it)."""
    shutil.copytree(EXAMPLES / "misbehaving-app", dest)
    (dest / "cs-config" / "install.sh").write_text(RECORDER)
    (dest / "cs-config" / "data.csv").write_text("a,b\n")
    return dest


def seen(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.strip().splitlines())


def expected(venv: str, install_dir: str) -> dict[str, str]:
    """On every tier: alone in its own folder of the environment, the model venv active."""
    return {
        "cwd": install_dir,
        "files": "install.sh ",
        "prefix": venv,
        "pip": f"{venv}/bin/pip",
    }


def test_install_sh_semantics_on_the_local_tier(tmp_path, cs_home):
    tier = get_tier("local")
    # the model's sandboxed steps need a checkout its uid can reach, as the clone step makes
    entry = tier.build(model(), recording_app(model_folder() / "app"), "v1", LOG)
    venv = Path(entry.python).parent.parent
    try:
        assert seen((venv / "install-seen.txt").read_text()) == expected(
            str(venv), str(venv / LOCAL_INSTALL_DIR)
        )
    finally:
        tier.discard(entry, LOG)
    assert not venv.exists()


def test_install_sh_semantics_on_the_docker_tier(tmp_path, monkeypatch, cs_home):
    from prefect_cs.testing.docker_tier import BASE_IMAGE, REGISTRY, ensure_docker
    from prefect_cs.tiers.docker import docker_cli

    ensure_docker()
    monkeypatch.setenv("CS_REGISTRY", REGISTRY)
    monkeypatch.setenv("CS_BASE_IMAGE", BASE_IMAGE)
    tier = get_tier("docker")
    entry = tier.build(model(), recording_app(tmp_path / "app"), "v1", LOG)
    try:
        record = subprocess.run(
            [docker_cli(), "run", "--rm", "--network", "none", entry.image or "", "cat"]
            + [f"{MODEL_VENV}/install-seen.txt"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert seen(record) == expected(MODEL_VENV, INSTALL_DIR)
    finally:
        tier.discard(entry, LOG)


# ---- the platform wheel without a source checkout ---------------------------------------------


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def test_platform_wheel_from_a_wheel_install(tmp_path, cs_home):
    """prefect-cs installed from its wheel (no checkout, no editable finder): the Docker tier
    repacks the installed files into a wheel with the same files, which installs and imports."""
    from prefect_cs.tiers.wheel import platform_wheel

    original = platform_wheel(LOG)  # from this checkout (editable install)
    venv = tmp_path / "installed"
    subprocess.run([*uv(), "venv", "-q", "--python", base_python(), str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*uv(), "pip", "install", "-q", "--no-deps", "--python", str(python), str(original)],
        check=True,
    )
    # The dependencies come from this venv's site-packages as a plain path: its .pth files
    # (the editable finder among them) are not run, so prefect_cs can only come from the wheel.
    (site_packages(python) / "deps.pth").write_text(f"{site_packages(Path(sys.executable))}\n")
    probe = (
        "import json, logging, prefect_cs.tiers.wheel as w; "
        "d = w.platform_distribution(); "
        "print(json.dumps({'module': w.__file__, 'editable': str(w.editable_checkout(d)),"
        " 'wheel': str(w.platform_wheel(logging.getLogger()))}))"
    )
    env = {**os.environ, "CS_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(venv)) and result["editable"] == "None"
    repacked = Path(result["wheel"])
    assert repacked.name == original.name
    assert_same_wheel(original, repacked)

    target = tmp_path / "reinstalled"
    subprocess.run(
        [*uv(), "pip", "install", "-q", "--no-deps", "--target", str(target), str(repacked)],
        check=True,
    )
    assert (target / "prefect_cs" / "tiers" / "Dockerfile").is_file()


def assert_same_wheel(original: Path, repacked: Path) -> None:
    """Same members with the same bytes; RECORD lists each with its right hash."""
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(repacked) as b:
        names = set(a.namelist())
        assert names == set(b.namelist())
        for name in names:
            if not name.endswith(".dist-info/RECORD"):
                assert a.read(name) == b.read(name), name
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = [line.split(",") for line in b.read(record).decode().splitlines()]
        assert {row[0] for row in rows} == names
        from prefect_cs.tiers.wheel import _urlsafe_sha256

        for name, digest, size in rows:
            if name != record:
                assert digest == f"sha256={_urlsafe_sha256(b.read(name))}", name
                assert int(size) == len(b.read(name))


def test_only_the_engines_own_copy_failure_builds_again():
    """The engine's failure to unpack a COPY (seen under concurrent builds) is built once more;
    the same words printed by the model's install.sh above the failing step are not."""
    from prefect_cs.tiers.docker import _build_failure, engine_copy_failure

    engine = _build_failure(
        "cs-base:bookworm",
        [
            "Step 9/12 : COPY cs-config/ /opt/cs/src/cs-config/",
            "failed to copy files: failed to copy directory: Error processing tar file(exit"
            " status 1): Error after fallback to chroot: no such file or directory",
        ],
    )
    model = _build_failure(
        "cs-base:bookworm",
        [
            "Error processing tar file",
            "The command '/bin/sh -c bash -e ./install.sh' returned a non-zero code: 1",
        ],
    )
    assert engine_copy_failure(engine)
    assert not engine_copy_failure(model)
    assert not engine_copy_failure("")
