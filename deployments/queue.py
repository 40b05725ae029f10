"""A model's simulations that have not finished, by state: the queue admission control keeps.

Over a pool's or a model's limit, runs wait in Prefect as Scheduled, Late or
AwaitingConcurrencySlot; `prefect-cs models show` prints this next to the limits
so an operator sees a burst being absorbed, not a hang.
"""

from __future__ import annotations

from collections import Counter

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect_cs.blocks.model_config import ModelConfig

PAGE = 200  # the most the API returns at once
WAITING_OR_RUNNING = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


def unfinished_runs(model: ModelConfig, most: int = 10_000) -> Counter[str]:
    """State name → how many of the model's simulate runs are in it (Late, Running, …);
    read in pages of the API's 200, up to `most`."""
    counts: Counter[str] = Counter()
    only = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=WAITING_OR_RUNNING))
    )
    deployment = DeploymentFilter(name=DeploymentFilterName(any_=[model.slug]))
    with get_client(sync_client=True) as client:
        for offset in range(0, most, PAGE):
            page = client.read_flow_runs(
                deployment_filter=deployment, flow_run_filter=only, limit=PAGE, offset=offset
            )
            counts.update(run.state.name for run in page if run.state)
            if len(page) < PAGE:
                break
    return counts
