"""The platform's own wheel, which every model image installs (the flow runs inside the image).

Two ways to get it, so the Docker tier works however prefect-cs was installed:

- editable install (a source checkout, `pip install -e .`): build the wheel from
  the checkout with `uv build`, so a developer's change reaches the image;
- regular install (from a wheel or an sdist): there is no checkout, so repack the
  installed distribution's own files (its RECORD lists every one) into a wheel.
  That is what the installer unpacked, minus what it generated (console scripts,
  INSTALLER, direct_url.json, bytecode), so it installs the same code.

Either way the wheel is kept under CS_HOME/wheels/<digest of the files>, built
once per version of the platform: an unchanged platform keeps its image layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from importlib.metadata import Distribution, distributions
from pathlib import Path
from urllib.parse import unquote, urlparse

from prefect_cs.core.errors import StepFailed
from prefect_cs.core.settings import get_settings
from prefect_cs.tiers.base import Logger
from prefect_cs.tiers.steps import run_step

DIST_NAME = "prefect-cs"
# Files an installer writes into .dist-info itself; a wheel must not carry them.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json"}


def platform_distribution() -> Distribution:
    """The installed prefect-cs, first on sys.path. Only an installer's .dist-info counts (it has
    a RECORD): a checkout's own prefect_cs.egg-info, on sys.path when run from the checkout, does
    not."""
    for dist in distributions(name=DIST_NAME):
        if dist.read_text("RECORD"):
            return dist
    raise StepFailed(
        "prefect-cs is not installed, so the docker tier cannot put it into an image:"
        " pip install prefect-cs (or pip install -e <checkout>)"
    )


def platform_requirements() -> list[str]:
    """This project's own pinned dependencies (not its test extras)."""
    return [r for r in platform_distribution().requires or [] if "extra ==" not in r]


def platform_wheel(logger: Logger) -> Path:
    """A wheel of the running platform, built once per version of its files."""
    dist = platform_distribution()
    checkout = editable_checkout(dist)
    if checkout is not None:
        return cached_wheel(
            checkout_digest(checkout), lambda out: build_from_checkout(checkout, out, logger)
        )
    return cached_wheel(installed_digest(dist), lambda out: repack_installed(dist, out))


# ---- an editable install: build from the checkout ---------------------------------------


def editable_checkout(dist: Distribution) -> Path | None:
    """The source checkout of an editable install (PEP 610 direct_url.json), else None."""
    info = json.loads(dist.read_text("direct_url.json") or "{}")
    if not info.get("dir_info", {}).get("editable"):
        return None
    checkout = Path(unquote(urlparse(info["url"]).path))
    if not (checkout / "pyproject.toml").is_file():
        raise StepFailed(
            f"prefect-cs is installed in editable mode from {checkout}, which holds no"
            " pyproject.toml any more: reinstall it (pip install -e <checkout>) or install its"
            " wheel"
        )
    return checkout


def package_folders(checkout: Path) -> list[Path]:
    """The folders pyproject.toml maps packages to: what the wheel is made of."""
    setuptools = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools.get("package-dir") or {
        p: p.replace(".", "/") for p in setuptools["packages"]
    }
    return sorted({checkout / folder for folder in folders.values()})


def checkout_digest(checkout: Path) -> str:
    """A hash of the checkout's packaged files and pyproject.toml."""
    files = {
        path
        for folder in package_folders(checkout)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    digest = hashlib.sha256()
    for path in sorted(files) + [checkout / "pyproject.toml"]:
        digest.update(str(path.relative_to(checkout)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_from_checkout(checkout: Path, out: Path, logger: Logger) -> None:
    """sdist, then the wheel from it, as pip would: a stale build/ in the checkout never leaks
    in."""
    run_step(
        "platform-wheel",
        [*_uv(), "build", "--quiet", "--out-dir", str(out), str(checkout)],
        logger,
        timeout=300,
    )


def _uv() -> list[str]:
    from prefect_cs.tiers.local import uv

    return uv()


# ---- a regular install: repack the installed files ----------------------------------------


def installed_digest(dist: Distribution) -> str:
    """RECORD holds every installed file's hash: a changed file changes it."""
    return hashlib.sha256((dist.read_text("RECORD") or "").encode()).hexdigest()[:16]


def wheel_members(dist: Distribution) -> list[tuple[str, Path]]:
    """(name in the wheel, installed file) for what the wheel had: code, data, its metadata."""
    members = []
    for file in dist.files or []:
        parts = file.parts
        if parts[0] == ".." or "__pycache__" in parts or file.suffix == ".pyc":
            continue  # console scripts (regenerated from entry_points.txt), bytecode
        if parts[0].endswith(".dist-info") and file.name in INSTALLER_FILES:
            continue
        members.append((file.as_posix(), Path(str(file.locate()))))
    return members


def wheel_name(dist: Distribution) -> str:
    name = dist.metadata["Name"].replace("-", "_").lower()
    wheel_info = dist.read_text("WHEEL") or ""
    tag = next(
        (
            line.split(":", 1)[1].strip()
            for line in wheel_info.splitlines()
            if line.startswith("Tag:")
        ),
        "py3-none-any",
    )
    return f"{name}-{dist.version}-{tag}.whl"


def repack_installed(dist: Distribution, out: Path) -> None:
    """Write the wheel: its members, then a fresh RECORD (hashes of what is packed)."""
    members = sorted(wheel_members(dist), key=lambda m: (".dist-info/" in m[0], m[0]))
    dist_info = next(name for name, _ in members if ".dist-info/" in name).split("/")[0]
    record = []
    with zipfile.ZipFile(out / wheel_name(dist), "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, path in members:
            data = path.read_bytes()
            wheel.writestr(name, data)
            record.append(f"{name},sha256={_urlsafe_sha256(data)},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# ---- the cache ------------------------------------------------------------------------------


def cached_wheel(digest: str, make: Callable[[Path], None]) -> Path:
    """CS_HOME/wheels/<digest>/*.whl, made into a temporary folder first (no half-made wheel)."""
    folder = get_settings().home / "wheels" / digest
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="building-", dir=folder.parent))
    try:
        make(work)
        try:
            work.rename(folder)
        except OSError:
            pass  # a concurrent publish made it first: use theirs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sorted(folder.glob("*.whl"))[0]
