"""The settings tree is the one reader of CS_* variables, and what jobs inherit derives from it.

Hand-kept lists of variables drifted (the Docker inputs server lacked CS_HOME and
CS_GCP_PROJECT that jobs got), so these checks scan the sources: no CS_* read
from the environment outside core/settings.py, every CS_* name mentioned is a
field of the tree, and nothing secret is ever forwarded.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_cs.core.errors import SettingsError
from prefect_cs.core.settings import (
    forwarded_environment,
    get_settings,
    is_secret,
    setting_fields,
    worker_settings_environment,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_MODULE = ROOT / "core" / "settings.py"
# Stand-ins and helpers that save, set and restore the environment of what tests start;
# they are not the platform reading its settings (ruff's TID251 exempts them too).
NOT_PLATFORM = {ROOT / "testing"}
NAME_RE = re.compile(r"\bCS_[A-Z0-9_]*[A-Z0-9]\b")
ENV_GETTERS = {"get", "setdefault"}


def package_dirs() -> list[Path]:
    """The folders pyproject.toml maps to prefect_cs.* packages."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [ROOT / d for d in config["tool"]["setuptools"]["package-dir"].values()]


def package_files(*suffixes: str) -> Iterator[Path]:
    for folder in package_dirs():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in suffixes:
                yield path
        for sub in ("docker",):  # package data (infra/docker/*.sh, *.yml)
            if (folder / sub).is_dir():
                yield from sorted(p for p in (folder / sub).iterdir() if p.suffix in suffixes)


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _is_getenv(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "getenv") or (
        isinstance(node, ast.Name) and node.id == "getenv"
    )


def _cs_string(node: ast.AST) -> bool:
    """ "CS_..." or f"CS_{...}"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("CS_")
    return isinstance(node, ast.JoinedStr) and bool(node.values) and _cs_string(node.values[0])


def _envvar_names(node: ast.Call) -> list[ast.AST]:
    """What a call's `envvar=` names (typer and click read that variable themselves)."""
    found = [k.value for k in node.keywords if k.arg == "envvar"]
    return [e for v in found for e in (v.elts if isinstance(v, ast.List | ast.Tuple) else [v])]


def environment_reads(source: str) -> list[int]:
    """Lines reading a CS_* variable: os.environ.get/[...]/in, os.getenv (also f-string names),
    and a typer option's envvar= (the CLI reads the settings tree like everything else)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and any(map(_cs_string, _envvar_names(node))):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and _cs_string(node.args[0]):
            func = node.func
            getter = isinstance(func, ast.Attribute) and func.attr in ENV_GETTERS
            if _is_getenv(func) or (getter and _is_environ(func.value)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if _is_environ(node.value) and _cs_string(node.slice):
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and _cs_string(node.left):
            if any(_is_environ(c) for c in node.comparators):
                lines.append(node.lineno)
    return lines


def test_the_scan_finds_each_way_of_reading():
    source = (
        "import os\nfrom os import environ, getenv\n"
        "a = os.environ.get('CS_A')\nb = os.environ['CS_B']\nc = 'CS_C' in os.environ\n"
        "d = os.getenv('CS_D')\ne = environ.get(f'CS_{x}_E')\nf = getenv('CS_F')\n"
        "os.environ['CS_G'] = 'written, not read'\nh = os.environ.get('PREFECT_API_URL')\n"
        "i = typer.Option(None, envvar='CS_I')\nj = typer.Option(None, envvar=['X', 'CS_J'])\n"
        "k = typer.Option(None, envvar='PREFECT_K')\n"
    )
    assert sorted(environment_reads(source)) == [3, 4, 5, 6, 7, 8, 11, 12]


def test_no_cs_variable_is_read_outside_the_settings_tree():
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in package_files(".py")
        if path != SETTINGS_MODULE and not any(d in path.parents for d in NOT_PLATFORM)
        for line in environment_reads(path.read_text())
    ]
    assert not found, (
        f"CS_* read from the environment at {found}: add a field to core/settings.py"
        " and read get_settings() instead"
    )


def test_every_cs_variable_mentioned_is_a_field_of_the_tree():
    sources = [*package_files(".py", ".json", ".sh", ".yml"), ROOT / "README.md"]
    sources += sorted((ROOT / "docs").glob("*.md"))
    fields = setting_fields()
    unknown = {
        f"{name} ({path.relative_to(ROOT)})"
        for path in sources
        for name in NAME_RE.findall(path.read_text())
        if name not in fields
    }
    assert not unknown, f"not in core/settings.py: {sorted(unknown)}"


def test_passwords_and_tokens_are_secrets_and_never_forwarded():
    for name, info in setting_fields().items():
        if any(word in name for word in ("PASSWORD", "TOKEN")):
            assert is_secret(info), f"{name} must be a SecretStr"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        assert not (is_secret(info) and extra.get("forward")), f"{name} is secret and forwarded"


@pytest.fixture
def everything_set(monkeypatch, tmp_path) -> dict[str, str]:
    """Every secret set to a recognisable value, plus the settings a job needs."""
    secrets = {n: f"value-of-{n}" for n, info in setting_fields().items() if is_secret(info)}
    plain = {"CS_GCP_PROJECT": "cs-project", "CS_HOME": str(tmp_path / "home")}
    for name, value in {**secrets, **plain}.items():
        monkeypatch.setenv(name, value)
    return secrets


def test_forwarded_environment_carries_home_and_gcp_project_and_no_secret(everything_set):
    env = forwarded_environment()
    assert env["CS_GCP_PROJECT"] == "cs-project"
    assert env["CS_HOME"] == str(get_settings().home)
    assert not set(env) & set(everything_set)
    assert not set(env.values()) & set(everything_set.values())


def test_forwarded_environment_leaves_out_what_is_not_set(monkeypatch):
    monkeypatch.delenv("CS_GCP_PROJECT", raising=False)
    assert "CS_GCP_PROJECT" not in forwarded_environment()


def test_local_workers_get_the_executor_password_only(everything_set):
    env = worker_settings_environment()
    assert env["CS_REDIS_EXECUTOR_PASSWORD"] == everything_set["CS_REDIS_EXECUTOR_PASSWORD"]
    assert not set(env) & (set(everything_set) - {"CS_REDIS_EXECUTOR_PASSWORD"})


def test_an_invalid_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("CS_REDIS_PORT", "six")
    with pytest.raises(SettingsError, match="CS_REDIS_PORT='six'"):
        get_settings()
