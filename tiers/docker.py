"""The Docker tier's environment: one image per model and tag, pushed to a registry.

Layers go from what every model shares to what changes most, so the Docker
build cache does the work of a re-publish:

1. the base image (`CS_BASE_IMAGE`) and the host's CA bundle;
2. the platform venv `/opt/cs/platform` with the project's pinned dependencies
   (Prefect and its collections; the flow runs there, the Docker worker
   starting it with `python -m prefect.engine`);
3. the model venv `/opt/cs/model` with cs-kit and pytest (same for every model);
4. the model's dependencies: its `install.sh` alone (or the install override);
5. the platform's own wheel (small; a platform change keeps layers 1-4);
6. the model's code (`cs-config`) and the child runner.

A code-only change rebuilds only layer 6. The image is built under a
throw-away tag, tested, and only then tagged `<registry>/<owner>_<title>:<tag>`
and pushed, so a failing build never replaces the image a deployment uses.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.settings import forwarded_environment, get_settings
from prefect_cs.flows.runtime.environment import RUNTIME_DIR
from prefect_cs.flows.runtime.model_process import CHILD_SCRIPT
from prefect_cs.tiers.base import Logger
from prefect_cs.tiers.local import CA_BUNDLE, TEST_REQUIREMENTS, uses_conda, uv
from prefect_cs.tiers.steps import StepFailed, run_step

PLATFORM_VENV = "/opt/cs/platform"
MODEL_VENV = "/opt/cs/model"
MODEL_SRC = "/opt/cs/src/cs-config"
MODEL_PYTHON = f"{MODEL_VENV}/bin/python"
MODEL_UID = 10001  # model children in containers: not root, not the flow's user
BUILD_TIMEOUT = 1800
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "blocks", "deployments", "work_pools")
# Non-secret settings the flow inside the container must agree on with the platform.
DOCKERFILE = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \\
    PIP_ROOT_USER_ACTION=ignore PIP_PROGRESS_BAR=off
# The host's CA bundle: pip and the platform trust a TLS-intercepting proxy like the host does.
COPY ca-certificates.crt /opt/cs/ca-certificates.crt
ENV PIP_CERT=/opt/cs/ca-certificates.crt SSL_CERT_FILE=/opt/cs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/opt/cs/ca-certificates.crt
# 1. The platform's pinned dependencies (shared by every model; its wheel comes after the model's).
COPY platform/requirements.txt /opt/cs/platform-requirements.txt
RUN python3 -m venv {platform} && {platform}/bin/pip install -r /opt/cs/platform-requirements.txt
# 2. The model's venv with its test tools (shared by every model).
RUN python3 -m venv {model} && {model}/bin/pip install {test_requirements}
# 3. The model's dependencies: only install.sh (or the override), so code changes keep this layer.
COPY install/ /opt/cs/install/
RUN cd /opt/cs/install && . {model}/bin/activate && bash -e ./install.sh
# 4. The platform's own code (small: a platform upgrade does not reinstall any model's dependencies).
COPY platform/wheels/ /opt/cs/wheels/
RUN {platform}/bin/pip install --no-deps --force-reinstall /opt/cs/wheels/*.whl
# 5. The model's code and the child runner.
COPY cs-config/ {src}/
RUN {model}/bin/pip install {src}
COPY child.py {model}/{runtime}/child.py
ENV PATH={platform}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR {src}
"""


def image_component(text: str) -> str:
    """Lowercase letters, digits and single dashes: valid in every registry's repository names."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned or "x"


def image_tag(tag: str) -> str:
    """A Docker tag: [A-Za-z0-9_.-], at most 128 characters, starting with a letter, digit or _."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-")
    return (cleaned or "untagged")[:128]


def image_repository(registry: str, model: ModelConfig) -> str:
    """`<registry>/<owner>_<title>`, cleaned to what registries accept."""
    name = f"{image_component(model.owner)}_{image_component(model.title)}"
    return f"{registry.rstrip('/')}/{name}"


@dataclass
class Registry:
    """Where images go: a host[:port], with credentials when a DockerRegistryCredentials block names them."""

    host: str
    block_name: str | None = None
    username: str | None = None
    password: str | None = None

    def auth_config(self) -> dict[str, str] | None:
        if not self.username:
            return None
        return {"username": self.username, "password": self.password or ""}


def registry_host(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")


def resolve_registry() -> Registry:
    """CS_REGISTRY_BLOCK (credentials) wins over CS_REGISTRY (an open registry such as 127.0.0.1:5000)."""
    settings = get_settings()
    if settings.registry_block:
        from prefect_docker.credentials import DockerRegistryCredentials

        try:
            block = DockerRegistryCredentials.load(settings.registry_block, _sync=True)
        except ValueError as exc:
            raise StepFailed(
                f"CS_REGISTRY_BLOCK={settings.registry_block!r} names no DockerRegistryCredentials"
                " block: save one (prefect block create docker-registry-credentials) or unset it"
            ) from exc
        return Registry(
            host=registry_host(block.registry_url),
            block_name=settings.registry_block,
            username=block.username,
            password=block.password.get_secret_value(),
        )
    if settings.registry:
        return Registry(host=registry_host(settings.registry))
    raise StepFailed(
        "the docker tier needs a registry: set CS_REGISTRY=127.0.0.1:5000 (an open local"
        " registry) or CS_REGISTRY_BLOCK=<name of a DockerRegistryCredentials block>"
    )


def docker_client(timeout: int = BUILD_TIMEOUT):
    """The Docker SDK's client from the environment (DOCKER_HOST or the local socket)."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise StepFailed(
            f"cannot reach the Docker engine ({exc}): start dockerd (see deployments/docker/start-engine.sh)"
            " or set DOCKER_HOST"
        ) from exc
    return client


# ---- the build context --------------------------------------------------------------


def platform_requirements() -> list[str]:
    """This project's own pinned dependencies (not its test extras)."""
    from importlib.metadata import requires

    return [r for r in requires("prefect-cs") or [] if "extra ==" not in r]


def source_digest() -> str:
    """A hash of the project's sources, so the wheel is rebuilt only when the platform changes."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
            if path.suffix in {".py", ".json", ".sh", ".yml"} and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
                digest.update(path.read_bytes())
    digest.update((PROJECT_ROOT / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def platform_wheel(logger: Logger) -> Path:
    """A wheel of this project, built once per version of its sources and kept under CS_HOME."""
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        raise StepFailed(
            f"the platform's sources are not at {PROJECT_ROOT}: the docker tier builds its wheel"
            " into each image, so install prefect-cs from a checkout (pip install -e .)"
        )
    folder = get_settings().home / "wheels" / source_digest()
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="building-", dir=folder.parent))
    try:
        run_step(
            "platform-wheel",
            [
                *uv(),
                "build",
                "--wheel",
                "--quiet",
                "--out-dir",
                str(work),
                str(PROJECT_ROOT),
            ],
            logger,
            timeout=300,
        )
        if not folder.exists():
            work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sorted(folder.glob("*.whl"))[0]


def install_files(model: ModelConfig, cs_config: Path, dest: Path) -> None:
    """install/install.sh: the model's own, or one made from the model config's install override."""
    dest.mkdir()
    override = (model.install_override or "").strip()
    script = cs_config / "install.sh"
    if override.startswith("run:"):
        (dest / "install.sh").write_text(override[4:].strip() + "\n")
    elif override:
        (dest / "override-requirements.txt").write_text(override + "\n")
        (dest / "install.sh").write_text("pip install -r override-requirements.txt\n")
    elif script.exists():
        if uses_conda(script.read_text()):
            raise StepFailed(
                f"{model.cs_config_path}/install.sh uses conda, which the docker tier's images do not have."
                " Set install_override in the model config to the pip requirements it needs (one per line),"
                " or to 'run: <command>'."
            )
        shutil.copy2(script, dest / "install.sh")
    else:
        (dest / "install.sh").write_text(
            "echo 'no install.sh: nothing to install before cs-config'\n"
        )


def build_context(model: ModelConfig, source: Path, logger: Logger) -> Path:
    """A folder with the Dockerfile and exactly what its COPY lines need (never a secret)."""
    cs_config = source / model.cs_config_path
    if not (cs_config / "cs_config").is_dir():
        raise StepFailed(
            f"no cs_config package at {model.cs_config_path}/cs_config in {model.repo_url}:"
            " set cs_config_path in the model config to the folder holding install.sh and cs_config/"
        )
    context = Path(tempfile.mkdtemp(prefix=f"{model.slug}-context-"))
    ca = Path(CA_BUNDLE)
    (context / "ca-certificates.crt").write_bytes(ca.read_bytes() if ca.exists() else b"")
    (context / "platform" / "wheels").mkdir(parents=True)
    (context / "platform" / "requirements.txt").write_text(
        "\n".join(platform_requirements()) + "\n"
    )
    shutil.copy2(platform_wheel(logger), context / "platform" / "wheels")
    install_files(model, cs_config, context / "install")
    shutil.copytree(
        cs_config,
        context / "cs-config",
        ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"),
    )
    shutil.copy2(CHILD_SCRIPT, context / "child.py")
    (context / "Dockerfile").write_text(
        DOCKERFILE.replace("{platform}", PLATFORM_VENV)
        .replace("{model}", MODEL_VENV)
        .replace("{src}", MODEL_SRC)
        .replace("{runtime}", RUNTIME_DIR)
        .replace("{test_requirements}", " ".join(TEST_REQUIREMENTS))
    )
    (context / ".dockerignore").write_text("**/.git\n**/__pycache__\n")
    return context


# ---- build, test, push -----------------------------------------------------------------


def stream_build(
    context: Path, tag: str, base_image: str, logger: Logger, no_cache: bool = False
) -> str:
    """`docker build` through the SDK's low-level stream: every line goes to the logs as it comes."""
    client = docker_client()
    tail: list[str] = []
    image_id = None
    logger.info("docker build %s (BASE_IMAGE=%s)", tag, base_image)
    for chunk in client.api.build(
        path=str(context),
        tag=tag,
        buildargs={"BASE_IMAGE": base_image},
        decode=True,
        rm=True,
        forcerm=True,
        pull=False,
        nocache=no_cache,
    ):
        if "error" in chunk:
            tail.append(chunk["error"].rstrip())
            raise StepFailed(_build_failure(base_image, tail))
        for line in str(chunk.get("stream", "")).splitlines():
            if line.strip():
                logger.info("[docker-build] %s", line.rstrip())
                tail = (tail + [line.rstrip()])[-60:]
        image_id = chunk.get("aux", {}).get("ID", image_id)
    if not image_id:
        raise StepFailed(_build_failure(base_image, tail))
    return image_id


def _build_failure(base_image: str, tail: list[str]) -> str:
    text = "\n".join(tail)
    hint = ""
    if "pull access denied" in text or "manifest unknown" in text or "No such image" in text:
        hint = (
            f" The base image {base_image} is not available here: on a machine that cannot pull,"
            " run deployments/docker/build-base-image.sh and set CS_BASE_IMAGE=cs-base:bookworm."
        )
    return f"docker build failed.{hint}\n--- last output ---\n{text}"


def docker_cli() -> str:
    path = shutil.which("docker")
    if not path:
        raise StepFailed("the docker command is missing: apt-get install docker.io")
    return path


def run_in_image(
    name: str, image: str, argv: list[str], logger: Logger, timeout: float, hint: str = ""
) -> str:
    """`docker run --rm` with its output streamed; the container is removed even on a timeout."""
    container = f"cs-{name}-{uuid.uuid4().hex[:10]}"
    try:
        return run_step(
            name,
            [docker_cli(), "run", "--rm", "--name", container, "--network", "none", image, *argv],
            logger,
            timeout=timeout,
            hint=hint,
        )
    finally:
        subprocess.run(
            [docker_cli(), "rm", "-f", container], capture_output=True, timeout=60, check=False
        )


def push_stream(repository: str, tag: str, registry: Registry, logger: Logger) -> str:
    """Push with the SDK, logging each layer's status once; returns the pushed digest."""
    client = docker_client()
    digest, seen = "", set()
    for chunk in client.api.push(
        repository, tag=tag, stream=True, decode=True, auth_config=registry.auth_config()
    ):
        if "error" in chunk:
            raise StepFailed(
                f"docker push {repository}:{tag} failed: {chunk['error']}."
                f" Check that the registry {registry.host} is running and accepts pushes."
            )
        status = f"{chunk.get('id', '')} {chunk.get('status', '')}".strip()
        if status and not chunk.get("progressDetail") and status not in seen:
            seen.add(status)
            logger.info("[docker-push] %s", status)
        digest = chunk.get("aux", {}).get("Digest", digest)
    return digest


class DockerBuilder:
    """Builds, tests and pushes a model's image; deploys it on the Docker pool."""

    tier = "docker"
    pool_type = "docker"
    no_cache = False  # the benchmark's cold publish sets it; publishes use the build cache

    def build(self, model: ModelConfig, source: Path, tag: str, logger: Logger) -> PublishedTag:
        registry = resolve_registry()
        repository = image_repository(registry.host, model)
        build_tag = f"{repository}:build-{uuid.uuid4().hex[:12]}"
        context = build_context(model, source, logger)
        try:
            stream_build(context, build_tag, get_settings().base_image, logger, self.no_cache)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        logger.info(
            "built %s; it is pushed as %s:%s only after its tests pass",
            build_tag,
            repository,
            image_tag(tag),
        )
        return PublishedTag(tag=tag, tier=self.tier, python=MODEL_PYTHON, image=build_tag)

    def test(self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger) -> None:
        if not (source / model.cs_config_path / "cs_config" / "tests").is_dir():
            raise StepFailed(
                f"no tests at {model.cs_config_path}/cs_config/tests: a model must ship its test suite"
            )
        run_in_image(
            "model-tests",
            entry.image or "",
            [MODEL_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "cs_config/tests"],
            logger,
            timeout=max(600, model.time_limit * 5),
            hint="The model's own tests failed inside its new image; nothing was pushed and the previous tag keeps serving.",
        )

    def model_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() through the same child runner simulations use, inside the image."""
        probe = (
            "import json; from prefect_cs.flows.runtime.model_process import call_model; "
            f"c = call_model({MODEL_PYTHON!r}, 'get_version', [], timeout=120, "
            f"runner={MODEL_VENV + '/' + RUNTIME_DIR + '/child.py'!r}); "
            "print('CS-VERSION ' + json.dumps({'ok': c.ok, 'result': c.result, 'error': c.error}))"
        )
        output = run_in_image(
            "get-version",
            entry.image or "",
            [f"{PLATFORM_VENV}/bin/python", "-c", probe],
            logger,
            timeout=180,
        )
        line = next(
            (ln for ln in reversed(output.splitlines()) if ln.startswith("CS-VERSION ")), ""
        )
        if not line:
            self.discard(entry, logger)
            raise StepFailed(f"get_version() printed no result in the new image:\n{output}")
        answer = json.loads(line.removeprefix("CS-VERSION "))
        if not answer["ok"]:
            self.discard(entry, logger)
            raise StepFailed(f"get_version() failed in the new image: {answer['error']}")
        return str(answer["result"])

    def push(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> PublishedTag:
        registry = resolve_registry()
        repository = image_repository(registry.host, model)
        tag = image_tag(entry.tag)
        client = docker_client()
        client.images.get(entry.image).tag(repository, tag)
        digest = push_stream(repository, tag, registry, logger)
        self._forget(entry.image or "")
        logger.info("pushed %s:%s (%s)", repository, tag, digest or "no digest reported")
        return entry.model_copy(update={"image": f"{repository}:{tag}"})

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        """Drop the throw-away build tag of an image that failed its tests (its layers stay cached)."""
        self._forget(entry.image or "")
        logger.info("discarded the failed image %s", entry.image)

    def _forget(self, image: str) -> None:
        if ":build-" not in image:
            return
        import docker

        try:
            docker_client().images.remove(image, noprune=True)
        except docker.errors.DockerException:
            pass

    def job_variables(self, model: ModelConfig, entry: PublishedTag) -> dict[str, Any]:
        """The image, cpu and memory limits, mounts, and secrets as block references (never values)."""
        limit = f"{model.memory_limit_mib}m"
        variables: dict[str, Any] = {
            "image": entry.image,
            # The engine itself rather than `prefect flow-run execute`, which starts the CLI and
            # then the engine in a second interpreter: one Python start-up less per simulation.
            "command": f"{PLATFORM_VENV}/bin/python -m prefect.engine",
            "image_pull_policy": "IfNotPresent",
            "mem_limit": limit,
            "memswap_limit": limit,
            "nano_cpus": int(model.cpu * 1_000_000_000),
            "env": container_env(model),
            "volumes": container_volumes(),
        }
        if get_settings().registry_block:
            variables["registry_credentials"] = registry_credentials_reference()
        return variables


def registry_credentials_reference() -> str:
    """The credentials block by name; the worker resolves it to the block's data when it pulls
    (work_pools/docker.json accepts this string form). Never the password itself."""
    return (
        "{{ prefect.blocks.docker-registry-credentials."
        + str(get_settings().registry_block)
        + " }}"
    )


def container_env(model: ModelConfig) -> dict[str, str]:
    """Settings the flow needs, and each declared secret as a reference the worker resolves at start."""

    env = forwarded_environment()
    env["CS_HOME"] = str(get_settings().home)
    env["CS_MEMORY_BY_CONTAINER"] = "true"
    env["CS_MODEL_UID"] = str(MODEL_UID)
    env.update(secret_references(model))
    return env


def secret_references(model: ModelConfig) -> dict[str, str]:
    """`{{ prefect.blocks.secret.<id> }}` per declared secret: the model's own, else the cluster's."""
    if not model.secrets:
        return {}
    from prefect_cs.security.secrets import (
        PrefectSecretsBackend,
        get_backend,
        parse_scope,
        secret_id,
    )

    scope = f"{model.owner}/{model.title}"
    if not isinstance(get_backend(scope), PrefectSecretsBackend):
        return {}  # other backends: the flow resolves them itself (runtime.declared_secrets)
    own, cluster = set(PrefectSecretsBackend(scope).list()), set(PrefectSecretsBackend(None).list())
    refs = {}
    for name in model.secrets:
        if name in own:
            ident = secret_id(parse_scope(scope), name)
        elif name in cluster:
            ident = secret_id(None, name)
        else:
            raise StepFailed(
                f"model {scope} declares secret {name!r}, which is set neither for the model nor"
                f" for the cluster: run `prefect-cs models -n {scope} secrets set --name {name}`"
            )
        refs[name] = "{{ prefect.blocks.secret." + ident + " }}"
    return refs


def container_volumes() -> list[str]:
    """Host folders the flow in the container writes: a LocalFileSystem outputs block, kept results."""
    from prefect.filesystems import LocalFileSystem
    from prefect_cs.flows.storage import load_outputs_storage

    settings = get_settings()
    folders = [settings.undelivered_dir]
    storage = load_outputs_storage()
    if isinstance(storage, LocalFileSystem):
        folders.append(Path(storage.basepath))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return [f"{folder}:{folder}" for folder in folders]
