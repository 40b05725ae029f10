"""The package as it ships: a wheel built from this tree, installed on its own.

Why: every other test runs the editable install, which finds any module of the
tree by path, so a package or a data file missing from pyproject.toml's
hand-written lists would only show once installed elsewhere. Here the wheel is
built from a copy of the tree, installed into a scratch venv without its
dependencies (they come from this venv through a .pth file, so nothing is
downloaded, and the editable install's finder is not loaded: .pth files are
only run in site directories), and the CLI, every module and the package data
are used from there.

Also: no platform module (every package but prefect_cs.testing) imports the
test helpers or test-only packages (kubernetes_validate) when imported, so an
install without the [test] extra works and stand-ins never ship into jobs by
accident (the stack may still start the web app stand-in as a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = ["prefect_cs.testing", "kubernetes_validate"]
NOT_SOURCES = [
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".cs-home",
]
# Data the platform reads at run time: must be in the wheel (Dockerfile: once it is in the tree).
REQUIRED_DATA = {
    "prefect_cs.work_pools": ["docker.json", "kubernetes.json"],
    "prefect_cs.infra": [
        "docker/build-base-image.sh",
        "docker/start-engine.sh",
        "docker/registry.yml",
    ],
    "prefect_cs.tiers": ["Dockerfile", "PlatformDockerfile"],
}


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Package name → its source folder, as pyproject.toml maps them."""
    return {name: ROOT / folder for name, folder in setuptools_config()["package-dir"].items()}


def source_modules() -> dict[str, Path]:
    """Every module of every mapped folder (subfolders too), by its importable name."""
    packages = {folder: name for name, folder in package_folders().items()}
    modules: dict[str, Path] = {}
    for folder in packages:
        for path in sorted(folder.rglob("*.py")):
            if package := packages.get(path.parent):  # unmapped: see the first test
                modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def expected_data() -> list[tuple[str, str]]:
    """(package, path in it) of every data file pyproject.toml names and the tree holds."""
    folders = package_folders()
    found = {
        (package, str(path.relative_to(folders[package])))
        for package, patterns in setuptools_config()["package-data"].items()
        for pattern in patterns
        for path in folders[package].glob(pattern)
    }
    for package, names in REQUIRED_DATA.items():
        found |= {(package, n) for n in names if (folders[package] / n).is_file()}
    return sorted(found)


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


PIP = [sys.executable, "-m", "pip", "-q"]
OFFLINE = ["--no-deps", "--no-index"]
PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"


def build_wheel(work: Path) -> Path:
    """A wheel built from a copy of the tree (an in-tree build/ would keep deleted modules)."""
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    run([*PIP, "wheel", *OFFLINE, "--no-build-isolation", "-w", "dist", str(source)], work)
    return next((work / "dist").glob("prefect_cs-*.whl"))


def install_alone(wheel: Path, venv: Path) -> Path:
    """A venv holding only the wheel; its dependencies are this venv's (a .pth, no download)."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = venv / "bin" / "python"
    run([*PIP, "--python", str(python), "install", *OFFLINE, str(wheel)], venv.parent)
    site = Path(run([str(python), "-c", PURELIB], venv.parent).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz_dependencies_from_the_dev_venv.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The scratch venv's python, with the wheel of this tree installed."""
    work = tmp_path_factory.mktemp("packaging")
    return install_alone(build_wheel(work), work / "venv")


IMPORT_ALL = """
import importlib, importlib.resources, json, sys
modules, data = json.loads(sys.argv[1]), json.loads(sys.argv[2])
files, failed = {}, {}
for name in modules:
    try:
        files[name] = importlib.import_module(name).__file__
    except Exception as error:
        failed[name] = repr(error)
import prefect_cs
print(json.dumps({
    "files": files,
    "failed": failed,
    "namespace": list(prefect_cs.__path__),
    "missing_data": [
        [p, n] for p, n in data if not importlib.resources.files(p).joinpath(n).is_file()
    ],
    "editable": [m for m in sys.modules if "__editable__" in m],
}))
"""

RUNTIME_IMPORTS = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(
    m for m in sys.modules if m.split(".")[0] in {"prefect_cs", "kubernetes_validate"}
)))
"""


def is_test_only(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TEST_ONLY)


def test_every_source_folder_is_a_listed_package():
    config = setuptools_config()
    assert sorted(config["packages"]) == sorted(config["package-dir"])
    folders = set(package_folders().values())
    with_code = {p.parent for f in folders for p in f.rglob("*.py")}
    assert with_code <= folders, f"not in pyproject.toml's packages: {sorted(with_code - folders)}"
    rooms = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert rooms == {f.name for f in folders if f.parent == ROOT}


def test_the_runtime_never_imports_test_helpers(tmp_path):
    runtime = [m for m in source_modules() if not is_test_only(m)]
    assert "prefect_cs.cli.main" in runtime and "prefect_cs.core" in runtime
    done = run([sys.executable, "-c", RUNTIME_IMPORTS, json.dumps(runtime)], tmp_path)
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert set(runtime) <= set(loaded)
    assert [m for m in loaded if is_test_only(m)] == []


def test_every_module_and_data_file_comes_from_the_wheel(installed):
    venv = installed.parents[1]
    modules, data = list(source_modules()), expected_data()
    assert ("prefect_cs.work_pools", "kubernetes.json") in data
    done = run([str(installed), "-c", IMPORT_ALL, json.dumps(modules), json.dumps(data)], venv)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["failed"] == {}
    outside = {m: f for m, f in report["files"].items() if not Path(f).is_relative_to(venv)}
    assert outside == {}
    assert all(Path(p).is_relative_to(venv) for p in report["namespace"]), report["namespace"]
    assert report["missing_data"] == []
    assert report["editable"] == []


@pytest.mark.parametrize("args", [["--help"], ["docker", "up", "--help"]])
def test_the_cli_runs_from_the_wheel(installed, args):
    venv = installed.parents[1]
    done = run([str(venv / "bin" / "prefect-cs"), *args], venv)
    assert "Usage" in done.stdout
