"""A flow that does nothing: the bare-Prefect baseline simulate's overhead is measured against.

benchmarks/burst.py deploys it on the same pool as the simulations and times
submit → Completed, side by side with simulate's submit → web app notified.
"""

from __future__ import annotations

from prefect import flow

NOOP_ENTRYPOINT = "prefect_cs.testing.noop_flow:noop"


@flow(name="noop")
def noop() -> None:
    """Nothing: whatever its run takes is Prefect's own cost on this pool."""
