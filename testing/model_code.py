"""Small model apps written by a test, runnable in the model sandbox without a publish.

The sandbox's uid must reach what it runs (bubblewrap binds as that uid), and pytest's
own tmp_path lives under a folder only root can enter: these folders live in a temporary
folder that uid can traverse, and run on an interpreter it can start.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from prefect_cs.runtime.model_process import CHILD_SCRIPT
from prefect_cs.runtime.sandbox import model_interpreter


def model_python() -> str:
    """An interpreter the model sandbox can start (stdlib only: the child needs nothing else)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return model_interpreter(version, getattr(sys, "_base_executable", sys.executable))


@functools.cache
def _base() -> Path:
    """One folder per process that the model uid can traverse (not list): mkdtemp, then 0711."""
    base = Path(tempfile.mkdtemp(prefix="cs-model-code-"))
    base.chmod(0o711)
    return base


def model_folder() -> Path:
    """A new folder for model code, reachable by the sandbox's uid whatever CS_HOME is."""
    folder = _base() / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder


def functions_runner(functions: str) -> str:
    """A runner whose cs_config.functions is `functions`, run by the platform's child.py."""
    folder = model_folder()
    package = folder / "cs_config"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "functions.py").write_text(functions)
    (folder / "child.py").write_text(CHILD_SCRIPT.read_text())
    runner = folder / "runner.py"  # -I ignores PYTHONPATH: the runner puts the package on the path
    runner.write_text(
        f"import runpy, sys\nsys.path.insert(0, {str(folder)!r})\n"
        f"runpy.run_path({str(folder / 'child.py')!r}, run_name='__main__')\n"
    )
    return str(runner)


def script_runner(source: str) -> str:
    """A runner that is `source` itself (argv: request, response), for calls that skip child.py."""
    runner = model_folder() / "runner.py"
    runner.write_text(source)
    return str(runner)


def model_venv(functions: str) -> str:
    """A virtualenv whose cs_config.functions is `functions`, with the runner installed as a
    publish installs it; returns its python (a venv made in ~0.1 s: no packages)."""
    from prefect_cs.runtime.environment import RUNTIME_DIR

    venv = model_folder() / "venv"
    subprocess.run([*uv(), "venv", "-q", "--python", model_python(), str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "cs_config").mkdir()
    (site / "cs_config" / "__init__.py").write_text("")
    (site / "cs_config" / "functions.py").write_text(functions)
    (venv / RUNTIME_DIR).mkdir()
    (venv / RUNTIME_DIR / CHILD_SCRIPT.name).write_text(CHILD_SCRIPT.read_text())
    return str(venv / "bin" / "python")


def package_venv(package: Path) -> str:
    """A virtualenv with the cs_config package at `package` installed (copied), and the runner
    as publish installs it; returns its python. For the attacker app's own code, fast."""
    import shutil

    from prefect_cs.runtime.environment import RUNTIME_DIR

    venv = model_folder() / "venv"
    subprocess.run([*uv(), "venv", "-q", "--python", model_python(), str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    shutil.copytree(package, site / "cs_config")
    (venv / RUNTIME_DIR).mkdir()
    (venv / RUNTIME_DIR / CHILD_SCRIPT.name).write_text(CHILD_SCRIPT.read_text())
    for path in [venv, *venv.rglob("*")]:
        if not path.is_symlink():
            path.chmod(
                path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444
            )
    return str(venv / "bin" / "python")


def uv() -> list[str]:
    from prefect_cs.tiers.local import uv as platform_uv

    return platform_uv()
