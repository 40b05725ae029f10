"""The Docker tier's engine, registry and base-image scripts, shipped as package data.

`prefect-cs docker up` and `docker base-image` run them from an installed wheel
as well as from a checkout, so they are found through importlib.resources,
never through a path relative to the source tree.
"""

from __future__ import annotations

import subprocess
from importlib import resources

SCRIPTS = resources.files("prefect_cs.infra") / "docker"


def run_script(name: str, *args: str) -> int:
    """Run one of the scripts with bash; its output goes to the caller's terminal."""
    with resources.as_file(SCRIPTS / name) as path:
        return subprocess.run(["bash", str(path), *args], check=False).returncode
