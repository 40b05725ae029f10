"""The publish flow: repository at a tag → tested environment → staged → promoted → deployed.

Each step is a task, so the Prefect UI shows them one by one. Promotion is the
last thing that changes the model record: any failure before it leaves the
previously promoted tag serving.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import StepFailed
from prefect_cs.core.github import CommitStatus
from prefect_cs.core.home import traverse_folder
from prefect_cs.core.names import check_tag, path_component
from prefect_cs.core.repo_urls import clone_source, git_protocols
from prefect_cs.core.settings import get_settings
from prefect_cs.tiers import get_tier
from prefect_cs.tiers.steps import run_step

Steps = Literal["all", "stage", "promote"]


def git_source(repo_url: str) -> str:
    """What git clones: checked here again, whatever wrote the config (core/repo_urls.py): a
    remote URL, or file:// of a local repository under CS_LOCAL_REPO_PREFIXES (resolved, so a
    shallow clone works and no `..` or symlink leads elsewhere)."""
    return clone_source(repo_url, get_settings().local_repo_prefixes)


def clone_command(source: str, tag: str, dest: Path) -> list[str]:
    """`git clone` of one tag of `source` (git_source's answer). git itself allows only the
    transports the rule allows (no `ext::`, no `file://` through a redirect or a submodule);
    `--` ends the options, so a URL starting with '-' stays a URL."""
    rule = ["protocol.allow=never"]
    rule += [f"protocol.{name}.allow=always" for name in git_protocols(source).split(":")]
    return [
        "git",
        *(arg for setting in rule for arg in ("-c", setting)),
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--branch",
        check_tag(tag),
        "--",
        source,
        str(dest),
    ]


@task(name="clone")
def clone(model: ModelConfig, tag: str) -> Path:
    logger = get_run_logger()
    source = git_source(model.repo_url)  # a ConfigError naming the fix, before git runs
    prefix = f"{model.slug}-{path_component(tag)}-"
    dest = Path(tempfile.mkdtemp(prefix=prefix, dir=_repos_dir()))
    dest.chmod(0o711)  # the model's sandboxed steps (its uid) build and test in this checkout
    run_step(
        "git-clone",
        clone_command(source, tag, dest),
        logger,
        timeout=600,
        hint=f"Check that {model.repo_url} is reachable and has the tag {tag!r}.",
    )
    logger.info("cloned %s@%s (%s)", model.repo_url, tag, head_commit(dest))
    return dest


def head_commit(source: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def _repos_dir() -> Path:
    """0711: the model's uid passes through to its own checkout (never lists the others)."""
    settings = get_settings()
    return traverse_folder(settings.repos_dir, settings.home)


@task(name="build-environment")
def build_environment(model: ModelConfig, source: Path, tag: str) -> PublishedTag:
    return get_tier(get_settings().tier).build(model, source, tag, get_run_logger())


@task(name="run-model-tests")
def run_model_tests(model: ModelConfig, entry: PublishedTag, source: Path) -> str | None:
    """The model's own test suite, then its version, both inside the new environment."""
    tier = get_tier(entry.tier)
    logger = get_run_logger()
    try:
        tier.test(model, entry, source, logger)
    except StepFailed:
        tier.discard(entry, logger)
        raise
    return tier.model_version(entry, logger)


@task(name="push")
def push(model: ModelConfig, entry: PublishedTag) -> PublishedTag:
    return get_tier(entry.tier).push(model, entry, get_run_logger())


@task(name="register")
def register(owner: str, title: str, entry: PublishedTag) -> None:
    model = ModelConfig.for_model(owner, title)
    model.record(entry)
    model.save_model()
    get_run_logger().info("registered %s/%s@%s (%s tier)", owner, title, entry.tag, entry.tier)


@task(name="stage")
def stage(owner: str, title: str, tag: str) -> None:
    model = ModelConfig.for_model(owner, title)
    model.staging_tag = tag
    model.save_model()


@task(name="promote")
def promote(owner: str, title: str, tag: str) -> PublishedTag:
    """Make `tag` the default for new simulations (it must have been published)."""
    model = ModelConfig.for_model(owner, title)
    entry = model.published(tag)
    previous, model.latest_tag = model.latest_tag, tag
    model.save_model()
    get_run_logger().info("promoted %s/%s: %s → %s", owner, title, previous, tag)
    return entry


@task(name="deploy")
def deploy(owner: str, title: str, entry: PublishedTag) -> str:
    from prefect_cs.deployments.deploy import deploy_model, deployment_name

    model = ModelConfig.for_model(owner, title)
    deployment_id = deploy_model(model, entry)
    get_run_logger().info(
        "deployment %s (%s) now serves %s", deployment_name(model), deployment_id, entry.tag
    )
    if entry.tier == "docker":
        from prefect_cs.deployments.docker_inputs import refresh_if_running

        if refresh_if_running(model):
            get_run_logger().info("inputs server of %s/%s moved to %s", owner, title, entry.image)
    return deployment_name(model)


@task(name="warm-inputs")
def warm_inputs(owner: str, title: str, entry: PublishedTag) -> None:
    """Ask the inputs server for the new tag's default inputs (not waited for): the web app's
    first call after this deploy then finds the model's process started and its answer cached."""
    from prefect_cs.flows.inputs import prewarm

    try:
        prewarm(ModelConfig.for_model(owner, title), entry)
    except Exception as exc:  # noqa: BLE001 - a speed-up, never a reason to fail the publish
        get_run_logger().warning("inputs of %s/%s@%s not warmed: %s", owner, title, entry.tag, exc)
    else:
        get_run_logger().info("asked the inputs server to warm %s/%s@%s", owner, title, entry.tag)


@flow(name="publish")
def publish(
    owner: str,
    title: str,
    tag: str | None = None,
    steps: Steps = "all",
    sha: str | None = None,
    repo: str | None = None,
) -> dict:
    """Publish OWNER/TITLE at `tag` (default: the model config's repo_tag).

    steps: "all" (build, test, push, stage, promote, deploy), "stage" (stop after
    staging: a pull request's check), "promote" (promote and deploy an already
    published tag: the merge).
    repo ("owner/name" on GitHub) and sha: the commit that gets a status
    (pending, then success or failure linked to this run); without repo, none.
    """
    status = CommitStatus(repo or None, sha or None, flow_run.ui_url, get_run_logger())
    status.report("pending", f"publishing {owner}/{title}@{tag or 'repo_tag'} ({steps})")
    try:
        result = _publish(owner, title, tag, steps, status)
    except BaseException:
        status.report("failure", f"publish of {owner}/{title} failed: see the flow run")
        raise
    done = "staged" if "staged" in result else "promoted and deployed"
    status.report(
        "success", f"{owner}/{title}@{result.get('staged') or result.get('promoted')} {done}"
    )
    return result


def _publish(owner: str, title: str, tag: str | None, steps: Steps, status: CommitStatus) -> dict:
    model = ModelConfig.for_model(owner, title)
    tag = check_tag(tag or model.repo_tag)
    if steps != "promote":
        source = clone(model, tag)
        try:
            if status.repo and not status.sha:  # a release names no commit: report on the clone's
                status.sha = head_commit(source)
                status.report("pending", f"publishing {owner}/{title}@{tag} ({steps})")
            entry = build_environment(model, source, tag)
            version = run_model_tests(model, entry, source)
            entry = push(model, entry.model_copy(update={"version": version}))
            register(owner, title, entry)
            stage(owner, title, tag)
        finally:
            shutil.rmtree(source, ignore_errors=True)
        if steps == "stage":
            return {"staged": tag}
    entry = promote(owner, title, tag)
    name = deploy(owner, title, entry)
    warm_inputs(owner, title, entry)
    create_markdown_artifact(
        key=f"publish-{model.slug}"[:100],
        markdown=f"# {owner}/{title} published\n\n- tag: `{tag}`\n- tier: {entry.tier}\n- version: {entry.version}\n"
        f"- environment: `{entry.image or entry.python}`\n- deployment: `{name}`\n",
    )
    return {"promoted": tag, "deployment": name, "version": entry.version}
