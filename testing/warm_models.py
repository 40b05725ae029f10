"""A warm model process whose `cs_config.functions` is a given source text, for tests.

The platform's own child script (flows/runtime/child.py) serves it, exactly as it serves a
published model; only the model code is written on the spot, so a test can make
get_inputs or validate_inputs raise, exit, or answer garbage without publishing an app.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect_cs.flows.runtime.model_process import CHILD_SCRIPT
from prefect_cs.flows.runtime.warm import WarmModel


def warm_model(folder: Path, functions: str) -> WarmModel:
    """A WarmModel running `functions` as cs_config.functions (stop() it when done)."""
    package = folder / "cs_config"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "functions.py").write_text(functions)
    runner = folder / "runner.py"  # -I ignores PYTHONPATH: the runner puts the package on the path
    runner.write_text(
        f"import runpy, sys\nsys.path.insert(0, {str(folder)!r})\n"
        f"runpy.run_path({str(CHILD_SCRIPT)!r}, run_name='__main__')\n"
    )
    return WarmModel(sys.executable, str(runner))
