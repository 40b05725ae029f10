"""The platform's own image: what a Kubernetes Job's flow runs in, never a model's image.

Why a separate image: a model's image is written by the model's build, as root (install.sh,
its `system_packages`), so anything in it (a `.pth`, `sitecustomize`, `/etc/ld.so.preload`,
the interpreter itself) may be the model's. A flow started there would run that code with the
platform's credentials (the Prefect API login, the web app token, the Redis executor password).
So the Job's flow container, and the init container that hands the model container the
child runner, run this image instead: built from the base image (CS_BASE_IMAGE), the host's CA
bundle, the platform's pinned requirements and its wheel (tiers/wheel.py), nothing else.

Layers: requirements first, the wheel last, so the Docker build cache rebuilds only the small
wheel layer when the platform's code changes. The image is pushed with the registry's login
(CS_REGISTRY_BLOCK) as `<registry>/prefect-cs-platform:<version>-<wheel digest>` and named
by the digest the push returned (`…@sha256:…`): that is what CS_PLATFORM_IMAGE holds, and
what the kubernetes tier's job variables carry (`platform_image`).
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

from prefect_cs.core.errors import StepFailed
from prefect_cs.core.settings import get_settings
from prefect_cs.tiers.base import Logger
from prefect_cs.tiers.docker import (
    push_stream,
    pushed_digest,
    resolve_registry,
    stream_build,
)
from prefect_cs.tiers.local import CA_BUNDLE
from prefect_cs.tiers.wheel import platform_distribution, platform_requirements, platform_wheel

PLATFORM_VENV = "/opt/cs/platform"  # in this image only: model images hold no platform code
REPOSITORY_NAME = "prefect-cs-platform"
RUNTIME_FOLDER = "/opt/cs/runtime"  # the image's copy of child.py, for the init container
PLATFORM_PYTHON = f"{PLATFORM_VENV}/bin/python"


def dockerfile() -> str:
    """tiers/PlatformDockerfile with this module's paths filled in."""
    template = resources.files("prefect_cs.tiers").joinpath("PlatformDockerfile").read_text()
    return template.replace("{platform}", PLATFORM_VENV).replace("{runtime}", RUNTIME_FOLDER)


def build_context(logger: Logger) -> tuple[Path, str]:
    """(a folder with the Dockerfile, the CA bundle, requirements and the wheel; the wheel's
    digest)."""
    context = Path(tempfile.mkdtemp(prefix="platform-context-"))
    try:
        ca = Path(CA_BUNDLE)
        (context / "ca-certificates.crt").write_bytes(ca.read_bytes() if ca.exists() else b"")
        (context / "requirements.txt").write_text("\n".join(platform_requirements()) + "\n")
        wheel = platform_wheel(logger)
        (context / "wheels").mkdir()
        shutil.copy2(wheel, context / "wheels")
        (context / "Dockerfile").write_text(dockerfile())
    except BaseException:
        shutil.rmtree(context, ignore_errors=True)
        raise
    return context, wheel.parent.name  # cached_wheel's folder: a digest of the platform's files


def build_platform_image(logger: Logger) -> str:
    """Build (the build cache makes a repeat cheap), push and return `<repository>@sha256:…`."""
    registry = resolve_registry()
    repository = f"{registry.host}/{REPOSITORY_NAME}"
    context, digest = build_context(logger)
    tag = f"{platform_distribution().version}-{digest[:12]}"
    try:
        stream_build(context, f"{repository}:{tag}", get_settings().base_image, logger)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    pushed = pushed_digest(repository, tag, push_stream(repository, tag, registry, logger))
    logger.info("pushed the platform image %s:%s as %s@%s", repository, tag, repository, pushed)
    return f"{repository}@{pushed}"


def configured_platform_image() -> str:
    """CS_PLATFORM_IMAGE, or the error that names the fix."""
    image = get_settings().platform_image
    if not image:
        raise StepFailed(
            "the kubernetes tier runs each Job's flow in the platform's own image, and"
            " CS_PLATFORM_IMAGE is not set: run `prefect-cs k8s platform-image` (it builds and"
            " pushes the image) and set CS_PLATFORM_IMAGE to the reference it prints"
        )
    if "@sha256:" not in image:
        raise StepFailed(
            f"CS_PLATFORM_IMAGE={image!r} names the platform image by tag: Jobs name images by"
            " digest only; set it to the `…@sha256:…` reference `prefect-cs k8s platform-image`"
            " prints"
        )
    return image
