"""Real git repositories of the sample apps, and publishing them on the test server."""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.registry.configs import register

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def make_repo(example: str, dest: Path, tag: str = "v1") -> Path:
    """Copy an example app into a new git repository tagged `tag`."""
    shutil.copytree(EXAMPLES / example, dest)
    git(dest, "init", "-q")
    add_tag(dest, tag, "initial")
    return dest


def add_tag(
    repo: Path, tag: str, message: str, change: Callable[[Path], None] | None = None
) -> None:
    if change:
        change(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    git(repo, "tag", "-f", tag)


def register_model(owner: str, title: str, repo: Path, **fields) -> ModelConfig:
    return register(ModelConfig(owner=owner, title=title, repo_url=str(repo), **fields))


def publish_model(owner: str, title: str, tag: str | None = None, steps: str = "all"):
    from prefect_cs.flows.publish import publish

    return publish(owner, title, tag, steps, return_state=True)


def sample_app_constant(name: str) -> bytes:
    """A module-level constant of the misbehaving app, evaluated from its source (the app's
    own imports, paramtools among them, are not in the platform's environment)."""
    path = EXAMPLES / "misbehaving-app" / "cs-config" / "cs_config" / "functions.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return eval(compile(ast.Expression(node.value), str(path), "eval"))  # noqa: S307
    raise LookupError(f"{name} is not defined in {path}")
