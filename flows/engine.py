"""The process pools' flow-run command (work_pools/pools.engine_command): Prefect's engine, with
the simulation's head start begun first.

Why: between the worker's submission and RUNNING the engine spends 1-2 s importing Prefect,
reading the run and importing the flow's module; the Docker tier's call container (about a
second to start: the engine's start, the model's import) can start in that time
(flows/head_start.py). The head start is begun in a thread at the interpreter's start; the
engine then runs exactly as `python -m prefect.engine` runs it, in this process, and the flow
takes the container only if it is for the model and tag it loads itself.
"""

from __future__ import annotations

import runpy


def main() -> None:
    # Imported here, in this thread: Prefect imported from two threads at once can see its own
    # modules half made. The flow's module imports all of it anyway.
    from prefect_cs.core.blocks import load_collections_first
    from prefect_cs.flows.head_start import begin_before_running

    load_collections_first()  # the engine's first block load would import them beside the thread
    begin_before_running()  # in a thread of its own: the engine goes on at once
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
