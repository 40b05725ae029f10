"""The publish flow: repository at a tag → tested environment → staged → promoted → deployed.

Each step is a task, so the Prefect UI shows them one by one. Promotion is the
last thing that changes the model record: any failure before it leaves the
previously promoted tag serving.

Forward only. A webhook-started publish (the trigger sets `forward_only`) and an
operator who asks for it never promote a tag older than the one promoted at that
moment: `promote` re-reads the record under the model's record lock
(flows/model_lock.py), compares (core/tag_order.py) and writes, so two tags
pushed at once cannot end with the older one promoted. `prefect-cs models
rollback` is the way back on purpose.

Commit statuses go to the model's own repository (its registered repo_url) and
the commit the clone resolved the tag to (recorded with the published tag for a
later promote), never to a repository or commit a request named; one context
per model.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import OlderTag
from prefect_cs.core.github import CommitStatus, repository_of, status_context
from prefect_cs.core.home import traverse_folder
from prefect_cs.core.names import check_tag, path_component
from prefect_cs.core.repo_urls import clone_source, git_protocols
from prefect_cs.core.settings import get_settings
from prefect_cs.core.tag_order import older_tag_message, older_than_promoted
from prefect_cs.flows.model_lock import model_record_lock
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
    """The model's own test suite, then its version (an interactive app: a smoke start of its
    server, which must answer HTTP), both inside the new environment."""
    tier = get_tier(entry.tier)
    logger = get_run_logger()
    tier.test(model, entry, source, logger)  # on any failure _publish discards the environment
    if model.interactive:
        tier.smoke_start(model, entry, logger)
        return None
    return tier.model_version(entry, logger)


@task(name="push")
def push(model: ModelConfig, entry: PublishedTag) -> PublishedTag:
    return get_tier(entry.tier).push(model, entry, get_run_logger())


@task(name="register")
def register(owner: str, title: str, entry: PublishedTag) -> None:
    with model_record_lock(owner, title):
        model = ModelConfig.for_model(owner, title)
        model.record(entry)
        model.save_model()
    get_tier(entry.tier).registered(entry)  # after the registry names it: never a gap
    get_run_logger().info("registered %s/%s@%s (%s tier)", owner, title, entry.tag, entry.tier)


@task(name="stage")
def stage(owner: str, title: str, tag: str) -> None:
    with model_record_lock(owner, title):
        model = ModelConfig.for_model(owner, title)
        model.staging_tag = tag
        model.save_model()


def refuse_older(model: ModelConfig, tag: str) -> None:
    """OlderTag when `tag` is older than the tag `model` (just re-read) has promoted."""
    history = [e.tag for e in model.published_tags]
    how = older_than_promoted(tag, model.latest_tag, history)
    if how is not None:
        raise OlderTag(
            older_tag_message(f"{model.owner}/{model.title}", tag, model.latest_tag, how)
        )


@task(name="promote")
def promote(owner: str, title: str, tag: str, forward_only: bool = False) -> PublishedTag:
    """Make `tag` the default for new simulations (it must have been published). Call it under
    the model's record lock: the record is read here, checked, and written, one writer at a
    time. forward_only: refuse (OlderTag) a tag older than the one promoted right now."""
    model = ModelConfig.for_model(owner, title)
    entry = model.published(tag)
    if forward_only:
        refuse_older(model, tag)
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
    get_tier(entry.tier).after_deploy(model, entry, get_run_logger())
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
    forward_only: bool = False,
) -> dict:
    """Publish OWNER/TITLE at `tag` (default: the model config's repo_tag).

    steps: "all" (build, test, push, stage, promote, deploy), "stage" (stop after
    staging: a pull request's check), "promote" (promote and deploy an already
    published tag: the merge).
    repo: when given, the run reports commit statuses (pending, then success or
    failure linked to this run) — always on the model's own repository (its
    repo_url) and the commit the clone resolved; sha is the commit the requester
    saw, only compared with it (logged when they differ).
    forward_only: refuse to promote a tag older than the promoted one (webhooks set it).
    """
    logger = get_run_logger()
    status = CommitStatus(None, None, flow_run.ui_url, logger)
    try:
        result = _publish(owner, title, tag, steps, status, forward_only, report=bool(repo))
    except OlderTag as exc:
        status.report("failure", f"refused: {exc}")
        raise
    except BaseException:
        status.report("failure", f"publish of {owner}/{title} failed: see the flow run")
        raise
    if sha and status.sha and sha != status.sha:
        logger.warning(
            "the request named commit %s; the status went on %s, the one built", sha, status.sha
        )
    done = "staged" if "staged" in result else "promoted and deployed"
    status.report(
        "success", f"{owner}/{title}@{result.get('staged') or result.get('promoted')} {done}"
    )
    return result


@contextmanager
def discarded_unless_registered(entry: PublishedTag) -> Iterator[None]:
    """Whatever ends the publish before the new environment is registered (a failed test, a
    failed push, a cancellation, the SIGTERM that marks the run Crashed) discards it: an
    unregistered environment is never used, and a venv is hundreds of MB. A SIGKILL leaves
    no chance to; `discard` failing never hides why the publish ended."""
    try:
        yield
    except BaseException:
        logger = get_run_logger()
        try:
            get_tier(entry.tier).discard(entry, logger)
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            logger.warning("the environment of %s was not discarded: %s", entry.tag, exc)
        raise


def report_on(status: CommitStatus, model: ModelConfig, commit: str | None, what: str) -> None:
    """Point the status at the model's own repository and `commit` (what was built), then
    report pending; no repository (a local repo_url) or no commit: nothing is reported."""
    status.repo, status.sha = repository_of(model.repo_url), commit
    status.context = status_context(get_settings().github.status_context, model.owner, model.title)
    status.report("pending", f"publishing {what}")


def _publish(
    owner: str,
    title: str,
    tag: str | None,
    steps: Steps,
    status: CommitStatus,
    forward_only: bool = False,
    report: bool = False,
) -> dict:
    model = ModelConfig.for_model(owner, title)
    tag = check_tag(tag or model.repo_tag)
    what = f"{owner}/{title}@{tag} ({steps})"
    if steps != "promote":
        source = clone(model, tag)
        try:
            commit = head_commit(source)
            if report:
                report_on(status, model, commit, what)
            entry = build_environment(model, source, tag)
            with discarded_unless_registered(entry):
                version = run_model_tests(model, entry, source)
                entry = push(model, entry.model_copy(update={"version": version, "commit": commit}))
                register(owner, title, entry)
            stage(owner, title, tag)
        finally:
            shutil.rmtree(source, ignore_errors=True)
        if steps == "stage":
            return {"staged": tag}
    elif report:
        report_on(status, model, model.published(tag).commit, what)
    with model_record_lock(owner, title):
        entry = promote(owner, title, tag, forward_only)
        if model.interactive:  # no simulations: the front door starts its servers on demand
            name = f"{model.tech} app, served per deployment (services/app_proxy.py)"
        else:
            name = deploy(owner, title, entry)
    if not model.interactive:
        warm_inputs(owner, title, entry)
    create_markdown_artifact(
        key=f"publish-{model.slug}"[:100],
        markdown=f"# {owner}/{title} published\n\n- tag: `{tag}`\n- tier: {entry.tier}\n"
        f"- version: {entry.version}\n"
        f"- environment: `{entry.image or entry.python}`\n- deployment: `{name}`\n",
    )
    return {"promoted": tag, "deployment": name, "version": entry.version}
