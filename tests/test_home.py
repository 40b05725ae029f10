"""CS_HOME's rules on folders made in a temporary folder: what is made with which mode, what is
refused.

Fast and without a server; tests/test_stack_home.py checks the same on a real stack, as uid 10001.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from prefect_cs.core.errors import SettingsError
from prefect_cs.core.home import (
    PRIVATE_FOLDERS,
    REACHED_BY_MODELS,
    earlier_database,
    exposures,
    prepare_home,
    private_folder,
    refuse_exposed,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "above" / "cs-home"
    prepare_home(home)
    return home


def test_prepare_makes_every_folder_with_its_mode(home):
    assert mode(home) == 0o711 and mode(home.parent) == 0o711
    for name in REACHED_BY_MODELS:
        assert mode(home / name) == 0o711, name
    for name in PRIVATE_FOLDERS:
        assert mode(home / name) == 0o700, name
    assert exposures(home) == []


def test_prepare_never_opens_or_closes_an_existing_folder(tmp_path):
    home = tmp_path / "cs-home"
    (home / "outputs").mkdir(parents=True)
    (home / "outputs").chmod(0o755)
    prepare_home(home)
    assert mode(home / "outputs") == 0o755, "the check names it; prepare must not hide it"


def test_private_folders_are_made_whole_whatever_the_umask(home):
    folder = private_folder(home / "api" / "pending-1" / "sim", home)
    assert [mode(p) for p in (folder.parent, folder)] == [0o700, 0o700]


def test_private_files_are_0600_even_when_they_existed(home):
    path = home / "undelivered" / "x.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert mode(path) == 0o600 and path.read_bytes() == b"new"


@pytest.mark.parametrize(
    ("name", "bad", "fix"),
    [
        ("outputs", 0o755, "chmod -R go-rwx"),
        ("prefect", 0o750, "chmod -R go-rwx"),
        ("stack", 0o701, "chmod -R go-rwx"),
        ("envs", 0o755, "chmod 711"),
        ("repos", 0o733, "chmod 711"),
    ],
)
def test_an_open_folder_is_refused_naming_its_chmod(home, name, bad, fix):
    (home / name).chmod(bad)
    with pytest.raises(SettingsError) as refused:
        refuse_exposed(home)
    assert f"{fix} {home / name}" in str(refused.value)
    assert f"mode {bad:o}" in str(refused.value)


def test_an_open_home_is_refused_but_traverse_only_is_not(home):
    home.chmod(0o700)
    assert exposures(home) == []  # 0700 is closer than needed (a stack that is not root)
    home.chmod(0o755)
    (found,) = exposures(home)
    assert found.path == home and found.fix == f"chmod 711 {home}"


def test_open_files_are_refused_in_home_and_by_name_inside_private_folders(home):
    auth, db = home / "prefect-auth", home / "prefect" / "prefect.db"
    for path in (auth, db):
        path.write_text("secret")
        path.chmod(0o644)
    fixes = {e.fix for e in exposures(home)}
    assert fixes == {f"chmod 600 {auth}", f"chmod 600 {db}"}


def test_unknown_entries_are_private_too(home):
    (home / "sample-repos").mkdir(mode=0o755)
    (home / "sample-repos").chmod(0o755)
    (home / "notes.yaml").write_text("x")
    (home / "notes.yaml").chmod(0o604)
    fixes = {e.fix for e in exposures(home)}
    assert fixes == {f"chmod -R go-rwx {home / 'sample-repos'}", f"chmod 600 {home / 'notes.yaml'}"}


def test_a_database_left_under_the_shell_prefect_home_is_found(tmp_path):
    home, shell = tmp_path / "cs-home", tmp_path / "dot-prefect"
    shell.mkdir()
    (shell / "prefect.db").write_text("registry")
    home.mkdir()
    assert earlier_database(home, shell) is None, "no stack ran here: a first start"
    (home / "prefect-auth").write_text("admin:x")
    assert earlier_database(home, shell) == shell / "prefect.db"
    (home / "prefect").mkdir()
    assert earlier_database(home, shell) is None, "the stack's own folder exists: it is used"
