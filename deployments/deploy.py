"""Creates or updates each model's simulate deployment.

The deployment is named after the model (`simulate/<owner>-<title>`); its work
pool and job variables come from the tier (prefect_cs.tiers), so a publish or a
rollback only has to call `deploy_model` to move new runs to an environment.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.flows import load_flow_from_entrypoint
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.tiers import get_tier
from prefect_cs.work_pools.pools import PUBLISHES_QUEUE, SIMULATIONS_QUEUE, ensure_pool

SIMULATE_ENTRYPOINT = "prefect_cs.flows.simulate:simulate"
PUBLISH_ENTRYPOINT = "prefect_cs.flows.publish:publish"
# A model's runs over its limit wait (AwaitingConcurrencySlot), none is refused
ENQUEUE = ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def create_flow_deployment(
    client: Any, entrypoint: str, name: str, pool: str, **fields: Any
) -> UUID:
    """Create or update a deployment of the flow at `entrypoint` on `pool`.

    Flows are named by entrypoint, as `prefect deploy` does, so this room never
    imports prefect_cs.flows (the publish flow imports it to deploy models).
    """
    flow = load_flow_from_entrypoint(entrypoint)
    return client.create_deployment(
        flow_id=client.create_flow(flow),
        name=name,
        entrypoint=entrypoint,
        work_pool_name=pool,
        parameter_openapi_schema=flow.parameters.model_dump(mode="json"),
        enforce_parameter_schema=True,
        pull_steps=[],
        **fields,
    )


def deploy_model(model: ModelConfig, entry: PublishedTag) -> UUID:
    """Point the model's simulate deployment at `entry` on its tier's pool."""
    tier = get_tier(entry.tier)
    ensure_pool(tier.pool_name, tier.pool_type)
    with get_client(sync_client=True) as client:
        return create_flow_deployment(
            client,
            SIMULATE_ENTRYPOINT,
            model.slug,
            tier.pool_name,
            version=entry.tag,
            parameters={"owner": model.owner, "title": model.title},
            job_variables=tier.job_variables(model, entry),
            work_queue_name=SIMULATIONS_QUEUE,
            concurrency_limit=model.max_concurrent_simulations,
            concurrency_options=ENQUEUE if model.max_concurrent_simulations else None,
            tags=["cs-simulate", f"model:{model.owner}/{model.title}", f"tag:{entry.tag}"],
            description=f"Simulations of {model.owner}/{model.title}; serving tag {entry.tag}.",
        )


def deployment_name(model: ModelConfig) -> str:
    return f"simulate/{model.slug}"


def deploy_publish() -> UUID:
    """The platform's own publish deployment on the process pool, with its event triggers.

    prefect.yaml declares the same deployment and triggers (`PUBLISH_TRIGGERS`).
    """
    tier = get_tier("local")
    ensure_pool(tier.pool_name, tier.pool_type)
    with get_client(sync_client=True) as client:
        deployment_id = create_flow_deployment(
            client,
            PUBLISH_ENTRYPOINT,
            "publish",
            tier.pool_name,
            work_queue_name=PUBLISHES_QUEUE,
            tags=["cs-publish"],
            description="Publish a model: clone, build, test, push, stage, promote, deploy.",
        )
        set_publish_triggers(client, deployment_id)
        return deployment_id


def set_publish_triggers(client: Any, deployment_id: UUID) -> None:
    """Replace the deployment's automations with PUBLISH_TRIGGERS, as `prefect deploy` does."""
    from prefect_cs.deployments.triggers import deployment_triggers

    client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    for trigger in deployment_triggers():
        trigger.set_deployment_id(deployment_id)
        client.create_automation(trigger.as_automation())
