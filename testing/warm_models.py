"""A warm model process whose `cs_config.functions` is a given source text, for tests.

The platform's own child script (runtime/child.py) serves it, exactly as it serves a
published model; only the model code is written on the spot, so a test can make
get_inputs or validate_inputs raise, exit, or answer garbage without publishing an app.
"""

from __future__ import annotations

from pathlib import Path

from prefect_cs.runtime.warm import WarmModel
from prefect_cs.testing.model_code import functions_runner, model_python


def warm_model(folder: Path, functions: str) -> WarmModel:
    """A WarmModel running `functions` as cs_config.functions (stop() it when done).

    `folder` is ignored: the model sandbox's uid must reach the code, so it lives under
    CS_HOME (testing.model_code), not in pytest's root-only tmp_path."""
    return WarmModel(model_python(), functions_runner(functions))
