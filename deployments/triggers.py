"""The `cs.publish.requested` event and the publish deployment's trigger on it.

Whoever wants a publish (our GitHub receiver, a Prefect Cloud webhook, an
operator with `prefect event emit`) emits this one event shape; the publish
deployment's trigger turns it into a flow run. The receiver never calls the
flow, so Prefect's automations are the single place where "event → run" lives.

`PUBLISH_TRIGGERS` is the one definition of that trigger: `deploy_publish()`
uses it, and `prefect.yaml` carries the same YAML (a test keeps them equal;
`prefect-cs webhook triggers` prints it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from prefect_cs.core.errors import NotConfigured

PUBLISH_REQUESTED = "cs.publish.requested"
RESOURCE_PREFIX = "cs.model."
# Receiver-side ids become event ids, so one delivery maps to one event id even if sent twice.
EVENT_ID_NAMESPACE = uuid.UUID("6f1b8f52-5a0e-4a4e-9d7e-2f6c1c8a3b10")


def _label(name: str) -> str:
    """A template reading one resource label; a missing label renders as null (None)."""
    return '{{ event.resource.get("' + name + '") }}'


PUBLISH_TRIGGERS: list[dict[str, Any]] = [
    {
        "name": "publish-on-cs.publish.requested",
        "description": "Run publish for the model, tag and steps named by a cs.publish.requested"
        " event.",
        "enabled": True,
        "match": {"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        "expect": [PUBLISH_REQUESTED],
        "posture": "Reactive",
        "threshold": 1,
        "within": 0,
        "parameters": {
            "owner": _label("cs.owner"),
            "title": _label("cs.title"),
            "tag": _label("cs.tag"),
            "steps": _label("cs.steps"),
            "sha": _label("cs.sha"),
            "repo": _label("cs.repo"),
            # whatever emitted the event, its publish never promotes an older tag (promote
            # checks under the model's record lock); `prefect-cs models rollback` goes back
            "forward_only": True,
        },
    }
]


@dataclass(frozen=True)
class PublishRequest:
    """What one delivery asks for: publish OWNER/TITLE at TAG with STEPS, reporting to REPO@SHA."""

    owner: str
    title: str
    tag: str | None
    steps: str  # "all" | "stage" | "promote"
    delivery: str
    sha: str | None = None
    repo: str | None = None  # "owner/name" of the GitHub repository that gets the commit status
    source: str = "github"

    def resource(self) -> dict[str, str]:
        """The event's resource: labels the trigger templates read (absent when unknown)."""
        labels = {
            "prefect.resource.id": f"{RESOURCE_PREFIX}{self.owner}/{self.title}",
            "prefect.resource.name": f"{self.owner}/{self.title}",
            "cs.owner": self.owner,
            "cs.title": self.title,
            "cs.steps": self.steps,
            "cs.delivery": self.delivery,
            "cs.tag": self.tag,
            "cs.sha": self.sha,
            "cs.repo": self.repo,
        }
        return {k: v for k, v in labels.items() if v}

    def key(self) -> str:
        """What makes two requests the same publish: a tag push and its release share it;
        a pull request's key includes the commit, so each new push to it is staged again."""
        commit = self.sha if self.steps != "all" else ""
        return f"{self.owner}/{self.title}@{self.tag or ''}:{self.steps}:{commit or ''}"

    def event_id(self) -> uuid.UUID:
        """Deterministic per delivery and model, so a resent event is one event to Prefect."""
        return uuid.uuid5(EVENT_ID_NAMESPACE, f"{self.delivery}:{self.owner}/{self.title}")


def emit_publish_requested(request: PublishRequest) -> uuid.UUID:
    """Emit the event; raise when events cannot be sent (no API configured)."""
    from prefect.events import emit_event

    event = emit_event(
        PUBLISH_REQUESTED,
        resource=request.resource(),
        payload={"source": request.source},
        id=request.event_id(),
    )
    if event is None:
        raise NotConfigured("Prefect events are disabled: set PREFECT_API_URL to the server's API")
    return event.id


# A Prefect Cloud webhook (one per model repository; Cloud cannot look models up by URL)
# producing the same event from a GitHub tag push. Anything else becomes cs.github.ignored,
# which no trigger matches. Cloud does not check X-Hub-Signature-256: its URL is the secret.
CLOUD_WEBHOOK_TEMPLATE = """\
{%- set is_tag = body.ref is defined and body.ref.startswith("refs/tags/") and not body.deleted -%}
{
  "event": "{{ 'cs.publish.requested' if is_tag else 'cs.github.ignored' }}",
  "resource": {
    "prefect.resource.id": "cs.model.@OWNER@/@TITLE@",
    "prefect.resource.name": "@OWNER@/@TITLE@",
    "cs.owner": "@OWNER@",
    "cs.title": "@TITLE@",
    "cs.steps": "all",
    "cs.tag": {{ (body.ref | replace("refs/tags/", "")) | tojson }},
    "cs.delivery": {{ headers["x-github-delivery"] | tojson }},
    "cs.sha": {{ body.after | tojson }},
    "cs.repo": {{ body.repository.full_name | tojson }}
  },
  "payload": {"source": "prefect-cloud-webhook"}
}
"""


def cloud_webhook_template(owner: str, title: str) -> str:
    """CLOUD_WEBHOOK_TEMPLATE for one model (owner and title already validated names)."""
    return CLOUD_WEBHOOK_TEMPLATE.replace("@OWNER@", owner).replace("@TITLE@", title)


def deployment_triggers() -> list[Any]:
    """PUBLISH_TRIGGERS as Prefect deployment trigger objects."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return [DeploymentEventTrigger(**spec) for spec in PUBLISH_TRIGGERS]
