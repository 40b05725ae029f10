"""The web app's projects list into the registry: "all model configuration lives in the web app".

Compute Studio's web app POSTs its projects to the cluster's `/sync/` (and the
1.6 cluster GETs the same list from `{web app}/publish/api/`). Each project is
upserted into its CS Model Config block so that the web app, not a YAML file,
can be the source of the registry. The map (README, "Connecting a web app"):

| project field   | model config field   | how                                                   |
|-----------------|----------------------|-------------------------------------------------------|
| owner, title    | owner, title         | as given; an invalid name refuses the whole list (400)|
| repo_url        | repo_url             | https/ssh/git only (core/repo_urls.py); needed for a  |
|                 |                      | model not registered yet                              |
| repo_tag        | repo_tag             | when non-empty                                        |
| cpu             | cpu                  | float                                                 |
| memory (GB)     | memory               | `<n>Gi` (the web app counts GB; we write Gi)          |
| exp_task_time   | expected_task_time   | seconds, at least 1; time_limit raised to it if lower |
| anything else   | —                    | ignored (oneliner, description, latest_tag, listed, …)|

What the platform records itself — published tags, the staged and promoted
tag — is never taken from the web app: `latest_tag` there is what the web app
*wants*, the promoted tag here is what publish *proved*. Fields a project does
not carry (secrets, time_limit, install_override, system_packages, internet)
keep their registered values. A project whose config would not change is not saved, so a
repeated sync writes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import ConfigError
from prefect_cs.core.names import check_name
from prefect_cs.registry.configs import all_models, check_repo_source, register
from pydantic import ValidationError

RECORD = {"published_tags", "staging_tag", "latest_tag"}  # the platform's own record
PLACEHOLDER_REPO = "https://x/y"  # stands for a repo_url a project does not carry, when checking


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


class SyncRefused(ConfigError):
    """Projects that cannot become model configs; nothing of the list was written."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        listed = "; ".join(f"{name}: {why}" for name, why in problems.items())
        super().__init__(f"projects refused, nothing synced: {listed}")


def projects_of(payload: Any) -> list[dict[str, Any]]:
    """The list itself, or `{"projects": [...]}` / a paginated `{"results": [...]}`."""
    if isinstance(payload, dict):
        payload = payload.get("projects", payload.get("results"))
    if not isinstance(payload, list) or not all(isinstance(p, dict) for p in payload):
        raise ConfigError(
            "expected a JSON list of projects (objects with owner, title, repo_url, …)"
        )
    return payload


def mapped_fields(project: dict[str, Any]) -> dict[str, Any]:
    """The model config fields a project sets (see the module's table)."""
    fields: dict[str, Any] = {"owner": project.get("owner"), "title": project.get("title")}
    if project.get("repo_url"):
        fields["repo_url"] = project["repo_url"]
    if project.get("repo_tag"):
        fields["repo_tag"] = str(project["repo_tag"])
    if project.get("cpu") is not None:
        fields["cpu"] = float(project["cpu"])
    if project.get("memory") is not None:
        fields["memory"] = gb_to_gi(project["memory"])
    if project.get("exp_task_time") is not None:
        fields["expected_task_time"] = max(1, math.ceil(float(project["exp_task_time"])))
    if project.get("tech") in ("cs-config", "dash", "bokeh", "streamlit"):  # C/S's interactive apps
        fields["tech"] = project["tech"]
        for name in ("app_location", "callable_name"):
            if project.get(name):
                fields[name] = str(project[name])
    return fields


def gb_to_gi(memory: Any) -> str:
    """The web app's GB as a Kubernetes quantity in Gi (4 → '4Gi', 0.5 → '0.5Gi')."""
    value = float(memory)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory must be a positive number of GB, got {memory!r}")
    return f"{value:g}Gi"


def project_name(project: dict[str, Any], index: int) -> str:
    owner, title = project.get("owner"), project.get("title")
    return f"{owner}/{title}" if owner is not None or title is not None else f"#{index}"


def planned(
    project: dict[str, Any], existing: dict[str, ModelConfig]
) -> tuple[ModelConfig | None, str | None]:
    """The config to save (None when skipped, with why); raises ValueError when refused."""
    fields = mapped_fields(project)
    check_name("owner", fields["owner"])
    check_name("title", fields["title"])
    current = existing.get(ModelConfig(**_placeholder(fields)).slug)
    if current is None and "repo_url" not in fields:
        return None, "no repo_url yet: not registered until the web app has one"
    base = current.model_dump(exclude=RECORD) if current else {}
    return config_of({**base, **fields}), None


def config_of(data: dict[str, Any]) -> ModelConfig:
    """The config, its time_limit raised to the expected task time; repo_url checked."""
    if data.get("time_limit", 600) < data.get("expected_task_time", 0):
        data["time_limit"] = data["expected_task_time"]
    return check_repo_source(ModelConfig(**data))


def _placeholder(fields: dict[str, Any]) -> dict[str, Any]:
    """Enough of a config to compute its slug before knowing if it exists."""
    return {"owner": fields["owner"], "title": fields["title"], "repo_url": PLACEHOLDER_REPO}


def problem(exc: Exception) -> str:
    """What is wrong with a project, one line per field pydantic names."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def check_projects(payload: Any) -> list[dict[str, Any]]:
    """The list, refused (SyncRefused) before it is acknowledged when a project could never be
    a model config: names, numbers, repo_url. Reads no registry, so it costs microseconds; a
    project without repo_url is checked with a placeholder (plan skips it if unregistered)."""
    projects = projects_of(payload)
    problems: dict[str, str] = {}
    for index, project in enumerate(projects):
        fields: dict[str, Any] = {"repo_url": PLACEHOLDER_REPO}
        try:
            fields.update(mapped_fields(project))
            check_name("owner", fields["owner"])
            check_name("title", fields["title"])
            config_of(fields)
        except (ValidationError, ValueError, TypeError) as exc:
            problems[project_name(project, index)] = problem(exc)
    if problems:
        raise SyncRefused(problems)
    return projects


def plan(
    projects: list[dict[str, Any]], existing: dict[str, ModelConfig]
) -> tuple[list[ModelConfig], SyncReport]:
    """Every project checked before anything is written: one bad project refuses the list."""
    problems: dict[str, str] = {}
    configs, report = [], SyncReport()
    for index, project in enumerate(projects):
        name = project_name(project, index)
        try:
            config, skipped = planned(project, existing)
        except (ValidationError, ValueError, TypeError) as exc:
            problems[name] = problem(exc)
            continue
        if config is None:
            report.skipped[name] = skipped or ""
        else:
            configs.append(config)
    if problems:
        raise SyncRefused(problems)
    return configs, report


def same(config: ModelConfig, current: ModelConfig | None) -> bool:
    if current is None:
        return False
    return config.model_dump(exclude=RECORD) == current.model_dump(exclude=RECORD)


def sync_projects(payload: Any, webapp: str | None = None) -> SyncReport:
    """Upsert every project of the list; idempotent (an unchanged config is not saved).
    `webapp`: the block of the v1 web app whose list this is (its models' results go there);
    the caller says it, never the list, and None leaves what a model has."""
    projects = projects_of(payload)
    existing = {m.slug: m for m in all_models()}
    configs, report = plan(projects, existing)
    if webapp is not None:
        configs = [c.model_copy(update={"webapp": webapp}) for c in configs]
    for config in configs:
        name, current = f"{config.owner}/{config.title}", existing.get(config.slug)
        if same(config, current):
            report.unchanged.append(name)
            continue
        register(config)  # keeps published tags, staged and promoted tag
        (report.updated if current else report.created).append(name)
    return report
