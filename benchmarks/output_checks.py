"""What checking and naming a result's outputs costs, before and after issue 18, side by side.

    .venv/bin/python benchmarks/output_checks.py [--sizes 1000,20000] [--old-ref REF]

20,000 tiny outputs held a worker for 336 s while the model ran 0.1 s: flows/outputs.py
rebuilt the settings tree once per output, and numbered duplicate titles by trying
` (2)`, ` (3)`, … from the start for each. For each size this prints, for the
implementation at REF (default: the commit before `_check_count` appeared, read with
`git show`) and the one installed here: `validate_outputs` on distinct tiny outputs
(the cap raised above the size, so every output is checked), `member_names` on
outputs that all share one title, and how long the new code takes to refuse the
result at its cap (CS_LIMITS_OUTPUT_COUNT, 1,000). Unit level, one process, no model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_cs.core.errors import MalformedOutputs  # noqa: E402
from prefect_cs.flows import outputs as new  # noqa: E402


def before_cap_ref() -> str:
    """The parent of the commit that introduced the output count cap."""
    argv = ["git", "-C", str(ROOT), "log", "-n1", "--format=%H", "-S_check_count("]
    argv += ["--", "flows/outputs.py"]
    commit = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    if not commit:
        raise SystemExit("no commit introduces _check_count: pass --old-ref")
    return f"{commit}^"


def old_module(ref: str) -> ModuleType:
    """flows/outputs.py as it was at `ref`, imported under another name."""
    argv = ["git", "-C", str(ROOT), "show", f"{ref}:flows/outputs.py"]
    source = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="cs-bench-outputs-")) / "old_outputs.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_outputs", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(count: int, same_title: bool) -> dict[str, list[dict[str, Any]]]:
    titles = ("n" for _ in range(count)) if same_title else (f"o{i}" for i in range(count))
    tiny = [{"media_type": "Text", "title": t, "data": "1"} for t in titles]
    return {"renderable": [], "downloadable": tiny}


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    try:
        call()
    except MalformedOutputs:
        pass
    return time.perf_counter() - started


def figures(module: ModuleType, count: int) -> tuple[float, float]:
    """(validate_outputs on distinct titles, member_names on one title), cap out of the way."""
    distinct, alike = result(count, same_title=False), result(count, same_title=True)
    os.environ["CS_LIMITS_OUTPUT_COUNT"] = str(count + 1)
    check = seconds(lambda: module.validate_outputs(distinct))
    names = seconds(lambda: module.member_names(alike["downloadable"]))
    del os.environ["CS_LIMITS_OUTPUT_COUNT"]
    return check, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000", help="comma-separated output counts")
    parser.add_argument("--old-ref", default=None, help="git ref of the implementation before")
    args = parser.parse_args()
    ref = args.old_ref or before_cap_ref()
    old = old_module(ref)
    print(f"old: flows/outputs.py at {ref}; new: {new.__file__}")
    print(
        f"{'outputs':>8} | {'check old':>10} {'check new':>10} | {'names old':>10}"
        f" {'names new':>10}"
        f" | {'refused at the cap (new)':>24}"
    )
    for count in (int(size) for size in args.sizes.split(",")):
        old_check, old_names = figures(old, count)
        new_check, new_names = figures(new, count)
        many = result(count, same_title=True)
        refused = seconds(lambda: new.validate_outputs(many))  # noqa: B023 - called here
        refusal = f"{refused * 1000:.2f} ms" if count > 1000 else "(under the cap)"
        print(
            f"{count:>8,} | {old_check:>9.3f}s {new_check:>9.3f}s | {old_names:>9.3f}s"
            f" {new_names:>9.3f}s | {refusal:>24}",
            flush=True,
        )


if __name__ == "__main__":
    main()
