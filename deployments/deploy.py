"""Creates or updates each model's simulate deployment.

The deployment is named after the model (`simulate/<owner>-<title>`); its work
pool and job variables come from the tier (prefect_cs.tiers), so a publish or a
rollback only has to call `deploy_model` to move new runs to an environment.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.tiers import get_tier
from prefect_cs.work_pools.pools import ensure_pool

SIMULATE_ENTRYPOINT = "prefect_cs.flows.simulate:simulate"


def deploy_model(model: ModelConfig, entry: PublishedTag) -> UUID:
    """Point the model's simulate deployment at `entry` on its tier's pool."""
    from prefect_cs.flows.simulate import simulate

    tier = get_tier(entry.tier)
    pool = tier.pool_name
    ensure_pool(pool, tier.pool_type)
    job_variables: dict[str, Any] = tier.job_variables(model, entry)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(simulate)
        return client.create_deployment(
            flow_id=flow_id,
            name=model.slug,
            version=entry.tag,
            entrypoint=SIMULATE_ENTRYPOINT,
            work_pool_name=pool,
            parameters={"owner": model.owner, "title": model.title},
            parameter_openapi_schema=simulate.parameters.model_dump(mode="json"),
            enforce_parameter_schema=True,
            job_variables=job_variables,
            tags=["cs-simulate", f"model:{model.owner}/{model.title}", f"tag:{entry.tag}"],
            description=f"Simulations of {model.owner}/{model.title}; serving tag {entry.tag}.",
            pull_steps=[],
        )


def deployment_name(model: ModelConfig) -> str:
    return f"simulate/{model.slug}"


def deploy_publish() -> UUID:
    """The platform's own publish deployment on the process pool, with its event triggers.

    prefect.yaml declares the same deployment and triggers (`PUBLISH_TRIGGERS`).
    """
    from prefect_cs.flows.publish import publish

    tier = get_tier("local")
    pool = tier.pool_name
    ensure_pool(pool, tier.pool_type)
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow(publish),
            name="publish",
            entrypoint="prefect_cs.flows.publish:publish",
            work_pool_name=pool,
            parameter_openapi_schema=publish.parameters.model_dump(mode="json"),
            enforce_parameter_schema=True,
            tags=["cs-publish"],
            description="Publish a model: clone, build, test, push, stage, promote, deploy.",
            pull_steps=[],
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
