"""The Docker tier: one image per model and tag, pushed to a registry; each model call a container
of it.

The image holds the model and nothing of the platform (tiers/Dockerfile). Its
build ran the model's install.sh as root, so anything in it may be the model's
(a `.pth`, `sitecustomize`, `/etc/ld.so.preload`, the interpreter): the
platform never runs its own code in it. The simulate flow runs on a process
worker of the tier's own pool (CS_DOCKER_POOL, a `process` pool) in the
platform's environment on a host with a Docker engine, and each call of the
model's code (simulate, the model's tests and get_version at publish, the
warm inputs process) is one container of the image started by the flow with
the Docker SDK (runtime/container.py): uid 10001, read-only root, no
capabilities, no network unless declared (then a bridge of its own, never the
host's), the model config's memory, pids, CPUs and disk, with the platform's
runner bound in read-only and a per-call exchange folder. Why this shape and
not a flow container beside it: a flow inside a container would need the
engine's socket to start its sibling, and that socket is root on the host;
the process worker already is the platform, on the host, so nothing is given
to a container that a model could reach.

Layers go from what every model shares to what changes most, so the Docker
build cache does the work of a re-publish:

1. the base image (`CS_BASE_IMAGE`) and the host's CA bundle;
2. the model venv `/opt/cs/model` with cs-kit and pytest (same for every model);
3. the model's dependencies, as root as on Compute Studio: the Debian packages
   its config lists (`system_packages`), then its `install.sh` alone (or the
   install override), run as on every tier (tiers/base.py); one that calls
   apt-get gets the package lists first;
4. the model's code (`cs-config`).

A code-only change rebuilds only layer 4. The image is built under a
throw-away tag, tested, and only then tagged `<registry>/<owner>_<title>:<tag>`
and pushed, so a failing build never replaces the image a deployment uses.
Deployments and runs name the image by the digest the push returned
(`<registry>/<owner>_<title>@sha256:…`), never by its tag: a tag pushed again
later (by a rebuild, or by anyone who can push) does not change what runs.

The registry asks for a login on every push and pull (the local one on
127.0.0.1:5000: htpasswd, infra/docker/start-engine.sh), so model code
that reaches it can neither read nor overwrite another model's image. The login
lives in a DockerRegistryCredentials block (CS_REGISTRY_BLOCK; `prefect-cs docker
up` saves the local registry's as `cs-registry`): publish sends it to the engine
with each push, and the flow with each pull (the SDK's auth_config, never a
`docker login` or a config file); no model container ever holds it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag, check_system_package
from prefect_cs.core.errors import ConfigError, StepFailed
from prefect_cs.core.names import image_name, image_tag
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.app_container import ContainerAppServer, ContainerAppSpec
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.container import (
    RUNNER,
    WORK,
    EarlyCall,
    WarmContainer,
    call_in_image,
    cli_flags,
    container_options,
    model_environment,
    start_early,
    sweep_orphaned_warm,
)
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.tiers.base import INSTALL_SCRIPT, JobVariables, Logger, Tier, system_package_lines
from prefect_cs.tiers.local import CA_BUNDLE, TEST_REQUIREMENTS
from prefect_cs.tiers.steps import run_step

MODEL_VENV = "/opt/cs/model"
MODEL_SRC = "/opt/cs/src/cs-config"
MODEL_PYTHON = f"{MODEL_VENV}/bin/python"
BUILD_TIMEOUT = 1800
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
INSTALL_DIR = "/opt/cs/install"  # where install.sh runs (tiers/Dockerfile), kept in the image


def image_repository(registry: str, model: ModelConfig) -> str:
    """`<registry>/<owner>_<title>`, cleaned to what registries accept, one per model
    (core/names.py)."""
    return f"{registry.rstrip('/')}/{image_name(model.owner, model.title)}"


LOCAL_REGISTRY_CREDENTIALS = Path("/etc/prefect-cs/registry/credentials")
"""The login infra/docker/start-engine.sh makes for the registry on 127.0.0.1:5000:
root only (0600 in a 0700 folder), JSON `{registry_url, username, password}`."""
LOCAL_REGISTRY_BLOCK = "cs-registry"
"""The DockerRegistryCredentials block `prefect-cs docker up` saves that login in."""
AUTH_REFUSED = ("no basic auth credentials", "unauthorized", "authentication required")


@dataclass
class Registry:
    """Where images go: a host[:port], with credentials when a DockerRegistryCredentials block names
    them."""

    host: str
    block_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or a traceback

    def auth_config(self) -> dict[str, str] | None:
        """What the Docker SDK sends the engine for one push or pull (X-Registry-Auth): the
        engine keeps no copy and nothing is written to a docker config file."""
        if not self.username:
            return None
        return {
            "username": self.username,
            "password": self.password or "",
            "serveraddress": self.host,
        }

    def refused(self, what: str, error: str) -> str:
        """The fix for a push or pull the registry refused for want of a (valid) login."""
        if not self.username:
            return (
                f"the registry {self.host} refused the {what} without a login ({error}):"
                f" set CS_REGISTRY_BLOCK={LOCAL_REGISTRY_BLOCK} after `prefect-cs docker up`"
                " (it saves the login of the local registry in that block), or name your registry's"
                " DockerRegistryCredentials block"
            )
        return (
            f"the registry {self.host} refused the {what} with the login of block"
            f" {self.block_name!r} ({error}): the password changed? `prefect-cs docker"
            " registry-block` saves the local registry's login again; for another registry"
            " update the block"
        )


def registry_host(url: str) -> str:
    return re.sub(r"^https?://", "", url).rstrip("/")


def resolve_registry() -> Registry:
    """CS_REGISTRY_BLOCK (credentials) wins over CS_REGISTRY (a registry without auth)."""
    settings = get_settings()
    if settings.registry_block:
        from prefect_docker.credentials import DockerRegistryCredentials

        try:
            block = DockerRegistryCredentials.load(settings.registry_block, _sync=True)
        except ValueError as exc:
            raise StepFailed(
                f"CS_REGISTRY_BLOCK={settings.registry_block!r} names no DockerRegistryCredentials"
                " block: `prefect-cs docker registry-block` saves the local registry's login as"
                f" {LOCAL_REGISTRY_BLOCK!r}; for another registry, prefect block create"
                " docker-registry-credentials"
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
        f"the docker tier needs a registry: set CS_REGISTRY_BLOCK={LOCAL_REGISTRY_BLOCK} (the local"
        " registry on 127.0.0.1:5000, saved by `prefect-cs docker up`), another"
        " DockerRegistryCredentials block's name, or CS_REGISTRY=<host[:port]> for a registry"
        " without auth"
    )


def local_registry_login(path: Path = LOCAL_REGISTRY_CREDENTIALS) -> dict[str, str]:
    """The login start-engine.sh made, read from its root-only file (never logged)."""
    try:
        login = json.loads(path.read_text())
    except PermissionError as exc:
        raise StepFailed(f"{path} is readable by root only: run this as root (sudo)") from exc
    except (OSError, ValueError) as exc:
        raise StepFailed(
            f"no registry login in {path} ({type(exc).__name__}): run `prefect-cs docker up`"
            " (infra/docker/start-engine.sh makes it)"
        ) from exc
    keys = ("registry_url", "username", "password")
    if not isinstance(login, dict) or not all(
        isinstance(login.get(k), str) and login[k] for k in keys
    ):
        raise StepFailed(
            f"{path} lacks registry_url, username or password: delete it and run `prefect-cs"
            " docker up` to make a new login"
        )
    return {k: login[k] for k in keys}


def save_registry_block(
    name: str = LOCAL_REGISTRY_BLOCK, path: Path = LOCAL_REGISTRY_CREDENTIALS
) -> str:
    """The local registry's login as a DockerRegistryCredentials block (overwritten, so a new
    password replaces the old); returns the registry's host. Publish pushes with the block,
    and deployments reference it by name for the Docker worker's pulls."""
    from prefect_docker.credentials import DockerRegistryCredentials

    login = local_registry_login(path)
    DockerRegistryCredentials(**login, reauth=True).save(name, overwrite=True, _sync=True)
    return login["registry_url"]


def docker_client(timeout: int = BUILD_TIMEOUT):
    """The Docker SDK's client from the environment (DOCKER_HOST or the local socket)."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise StepFailed(
            f"cannot reach the Docker engine ({exc}): start dockerd (see"
            " infra/docker/start-engine.sh)"
            " or set DOCKER_HOST"
        ) from exc
    return client


# ---- the build context --------------------------------------------------------------


APT_ENV = "DEBIAN_FRONTEND=noninteractive"


def apt_install_step(packages: list[str]) -> str:
    """The Dockerfile line that installs a model's system packages as root, or a comment.
    With their recommended packages, as install.sh's own `apt-get install` did on Compute
    Studio (texlive's lmodern.sty is a recommendation), so moving install.sh's packages into
    system_packages changes nothing.
    Names are checked again here (they were when the config was made): each is one word of
    Debian's package-name alphabet, so nothing else can reach the shell."""
    if not packages:
        return "# system_packages: none"
    names = " ".join(check_system_package(name) for name in packages)
    return (
        f"RUN apt-get update -q && {APT_ENV} apt-get install -y -q"
        f" {names} && rm -rf /var/lib/apt/lists/*"
    )


def dockerfile(system_packages: list[str] | None = None, install_uses_apt: bool = False) -> str:
    """tiers/Dockerfile with this module's paths and the model's system packages filled in."""
    template = resources.files("prefect_cs.tiers").joinpath("Dockerfile").read_text()
    apt_lists = f"apt-get update -q && export {APT_ENV} && " if install_uses_apt else ""
    return (
        template.replace("{system_packages}", apt_install_step(system_packages or []))
        .replace("{apt_lists}", apt_lists)
        .replace("{model}", MODEL_VENV)
        .replace("{src}", MODEL_SRC)
        .replace("{install}", INSTALL_DIR)
        .replace("{test_requirements}", " ".join(TEST_REQUIREMENTS))
    )


# ---- build, test, push -----------------------------------------------------------------


# The engine's own failure to unpack a COPY into the layer it builds (seen twice under
# concurrent builds on one engine, never for the model's files): worth one more try.
ENGINE_COPY_FAILURE = "Error processing tar file"


def stream_build(
    context: Path, tag: str, base_image: str, logger: Logger, no_cache: bool = False
) -> str:
    """`docker build` through the SDK's low-level stream: every line goes to the logs as it
    comes. Built again once when the engine failed to unpack a COPY (ENGINE_COPY_FAILURE);
    any other failure is the build's."""
    try:
        return _stream_build(context, tag, base_image, logger, no_cache)
    except StepFailed as exc:
        if not engine_copy_failure(str(exc)):
            raise
        last = str(exc).rstrip().splitlines()[-1]
        logger.warning("the engine failed to unpack a COPY step (%s); building once more", last)
        return _stream_build(context, tag, base_image, logger, no_cache)


def engine_copy_failure(message: str) -> bool:
    """The build failed in the engine's unpacking of a COPY: its last line, the engine's own
    error (the model's output above it cannot ask for a second build)."""
    lines = message.rstrip().splitlines()
    return bool(lines) and ENGINE_COPY_FAILURE in lines[-1]


def _stream_build(
    context: Path, tag: str, base_image: str, logger: Logger, no_cache: bool = False
) -> str:
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
            " run infra/docker/build-base-image.sh and set CS_BASE_IMAGE=cs-base:bookworm."
        )
    return f"docker build failed.{hint}\n--- last output ---\n{text}"


def docker_cli() -> str:
    path = shutil.which("docker")
    if not path:
        raise StepFailed("the docker command is missing: apt-get install docker.io")
    return path


def tests_command() -> list[str]:
    """The model's tests, from a copy of its source in the container's writable work folder
    (WORK, a size-limited tmpfs): the image's own source is read-only, and the process tier
    runs them in a writable checkout, where apps write reports (Tax-Brain's
    ./Policy-Report-…/). A fixed command: nothing of the model's reaches the shell."""
    copy = f"{WORK}/cs-config"  # not HOME itself (WORK), as on the process tier
    pytest = f"{MODEL_PYTHON} -m pytest -q -p no:cacheprovider --rootdir {copy} cs_config/tests"
    return ["sh", "-c", f"cp -R {MODEL_SRC} {copy} && cd {copy} && exec {pytest}"]


VERSION_BOUNDS = Bounds(memory_mib=1024, pids=256, cpus=1.0, disk_mib=256)
"""get_version at publish: the model config's bounds are for its runs; a version needs less."""


def model_bounds(model: ModelConfig) -> Bounds:
    """A container of the model's code gets its declared memory, pids, CPUs and disk."""
    return Bounds(model.memory_limit_mib, model.pids, model.cpu, model.disk_mib)


def run_in_image(
    name: str,
    image: str,
    argv: list[str],
    logger: Logger,
    timeout: float,
    hint: str = "",
    flags: list[str] | None = None,
) -> str:
    """`docker run --rm` with its output streamed; the container is removed even on a timeout.
    flags: the model's confinement (container.cli_flags); without it, no network at least."""
    for attempt in (1, 2):
        container = f"cs-{name}-{uuid.uuid4().hex[:10]}"
        options = ["--rm", "--name", container, *(flags or ["--network", "none"])]
        try:
            return run_step(
                name,
                [docker_cli(), "run", *options, image, *argv],
                logger,
                timeout=timeout,
                hint=hint,
            )
        except StepFailed as failed:
            # The engine refusing the start itself (runc's "stat …/bin/python: permission
            # denied", seen under concurrent builds) is not the model's fault: once more.
            if attempt == 2 or ENGINE_START_REFUSED not in str(failed):
                raise
            logger.warning("the engine refused to start %s; starting it once more", name)
            time.sleep(1.0)
        finally:
            subprocess.run(
                [docker_cli(), "rm", "-f", container], capture_output=True, timeout=60, check=False
            )
    raise AssertionError("unreachable")


ENGINE_START_REFUSED = "OCI runtime create failed"


def push_stream(repository: str, tag: str, registry: Registry, logger: Logger) -> str:
    """Push with the SDK, logging each layer's status once; returns the pushed digest."""
    client = docker_client()
    digest, seen = "", set()
    for chunk in client.api.push(
        repository, tag=tag, stream=True, decode=True, auth_config=registry.auth_config()
    ):
        if "error" in chunk:
            error = str(chunk["error"])
            if any(word in error.lower() for word in AUTH_REFUSED):
                raise StepFailed(
                    f"docker push {repository}:{tag} failed: " + registry.refused("push", error)
                )
            raise StepFailed(
                f"docker push {repository}:{tag} failed: {error}."
                f" Check that the registry {registry.host} is running and accepts pushes."
            )
        status = f"{chunk.get('id', '')} {chunk.get('status', '')}".strip()
        if status and not chunk.get("progressDetail") and status not in seen:
            seen.add(status)
            logger.info("[docker-push] %s", status)
        digest = chunk.get("aux", {}).get("Digest", digest)
    return digest


def ensure_image(image: str, client: Any = None) -> None:
    """Pull `image` unless the engine has it, with the registry's login (CS_REGISTRY_BLOCK):
    what containers started outside a worker (the inputs server) need on a registry with auth."""
    import docker

    client = client or docker_client()
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    registry = resolve_registry()
    # The login goes only to its own registry, never to whichever host an image names.
    auth = registry.auth_config() if image.startswith(registry.host + "/") else None
    try:
        client.images.pull(image, auth_config=auth)
    except docker.errors.APIError as exc:
        error = str(exc.explanation or exc)
        if any(word in error.lower() for word in AUTH_REFUSED):
            raise StepFailed(
                f"docker pull {image} failed: " + registry.refused("pull", error)
            ) from exc
        raise StepFailed(f"docker pull {image} failed: {error}") from exc


def pushed_digest(repository: str, tag: str, reported: str) -> str:
    """The registry's digest of what was just pushed: the push's own report, else the local
    image's RepoDigests entry for `repository`; a push that yields none is refused."""
    if DIGEST_RE.fullmatch(reported):
        return reported
    for reference in (
        docker_client().images.get(f"{repository}:{tag}").attrs.get("RepoDigests") or []
    ):
        name, _, digest = reference.partition("@")
        if name == repository and DIGEST_RE.fullmatch(digest):
            return digest
    raise StepFailed(
        f"docker push {repository}:{tag} reported no sha256 digest, and deployments reference"
        " images by digest only: check that the registry speaks the Docker Registry v2 API"
    )


class DockerJobVariables(JobVariables):
    """None: the flow runs on the tier's process pool in the platform's environment, and takes
    the image (by digest), bounds and secrets from the model config when the run starts."""


class DockerTier(Tier):
    """Builds, tests and pushes a model's image; each call of its code is a container of it.

    Its own: the environment is an image built under a throw-away tag (never
    pushed before its tests pass), tests and get_version() run in a confined
    container of it, push tags and pushes it, discard drops the build tag; the
    flow runs on the tier's process pool and calls the model in containers.
    """

    name = "docker"
    pool_type = "process"  # the flow on the host, in the platform's environment
    pool_setting = "docker_pool"
    variables_model = DockerJobVariables
    installs_as_root = True  # the image build's RUN lines, as Compute Studio's Dockerfile did
    no_cache = False  # the benchmark's cold publish sets it; publishes use the build cache

    def create(self, model: ModelConfig, cs_config: Path, tag: str, logger: Logger) -> PublishedTag:
        registry = resolve_registry()
        repository = image_repository(registry.host, model)
        build_tag = f"{repository}:build-{uuid.uuid4().hex[:12]}"
        context = self.build_context(model, cs_config, logger)
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
        return PublishedTag(tag=tag, tier=self.name, python=MODEL_PYTHON, image=build_tag)

    def build_context(self, model: ModelConfig, cs_config: Path, logger: Logger) -> Path:
        """A folder with the Dockerfile and exactly what its COPY lines need (never a secret)."""
        context = Path(tempfile.mkdtemp(prefix=f"{model.slug}-context-"))
        try:
            self.write_install_folder(model, cs_config, context / "install")
            ca = Path(CA_BUNDLE)
            (context / "ca-certificates.crt").write_bytes(ca.read_bytes() if ca.exists() else b"")
            shutil.copytree(
                cs_config,
                context / "cs-config",
                ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"),
            )
            install = (context / "install" / INSTALL_SCRIPT).read_text()
            (context / "Dockerfile").write_text(
                dockerfile(model.system_packages, bool(system_package_lines(install)))
            )
            (context / ".dockerignore").write_text("**/.git\n**/__pycache__\n")
        except BaseException:
            shutil.rmtree(context, ignore_errors=True)
            raise
        return context

    def run_tests(
        self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger
    ) -> None:
        """In a container of the new image as every model call runs (runtime/container.py):
        uid 10001, read-only, no capabilities, the model's own bounds, no network unless the
        model declares `internet`; never the platform's code. In a writable copy of its source
        (tests_command), like the process tier's checkout."""
        options = container_options(
            model_bounds(model), model.internet, model_environment(MODEL_PYTHON)
        )
        run_in_image(
            "model-tests",
            entry.image or "",
            tests_command(),
            logger,
            timeout=max(600, model.time_limit * 5),
            hint="The model's own tests failed inside its new image; nothing was pushed and the"
            " previous tag keeps serving.",
            flags=cli_flags(options),
        )

    def get_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() in a container of the new image, with the platform's runner bound in
        read-only (runtime/container.py): no platform code of the image runs."""
        call = call_in_image(
            docker_client(),
            entry.image or "",
            MODEL_PYTHON,
            "get_version",
            [],
            timeout=180,
            bounds=VERSION_BOUNDS,
        )
        if not call.ok:
            raise StepFailed(f"get_version() failed in the new image: {call.error}")
        return str(call.result)

    def push(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> PublishedTag:
        registry = resolve_registry()
        repository = image_repository(registry.host, model)
        tag = image_tag(entry.tag)
        client = docker_client()
        client.images.get(entry.image).tag(repository, tag)
        digest = pushed_digest(repository, tag, push_stream(repository, tag, registry, logger))
        self._forget(entry.image or "")
        logger.info("pushed %s:%s as %s@%s", repository, tag, repository, digest)
        # By digest: a tag can be pushed again (by anyone who can push), a digest cannot change.
        return entry.model_copy(update={"image": f"{repository}@{digest}"})

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        """Drop the throw-away build tag of an image that failed its tests (its layers stay
        cached)."""
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

    def image_of(self, model: ModelConfig, entry: PublishedTag) -> str:
        if not entry.image:
            raise ConfigError(
                f"{model.owner}/{model.title}@{entry.tag} has no image: the {self.name} tier runs"
                f" the image publish pushed; publish the tag with CS_TIER={self.name}"
            )
        return entry.image

    def variables(self, model: ModelConfig, entry: PublishedTag) -> DockerJobVariables:
        """Checks the entry has an image; the run reads everything else from the model config."""
        self.image_of(model, entry)
        return DockerJobVariables()

    def call_model(
        self,
        model: ModelConfig,
        entry: PublishedTag,
        function: str,
        args: list[Any],
        env: dict[str, str],
    ) -> ModelCall:
        """A container of the model's image, pulled with the registry's login if this engine
        lacks it (runtime/container.py)."""
        try:
            image = self.image_of(model, entry)
            client = docker_client()
            ensure_image(image, client)
        except (ValueError, StepFailed) as exc:
            return ModelCall(ok=False, error=str(exc))
        return call_in_image(
            client, image, MODEL_PYTHON, function, args, env=env, **call_terms(model, entry)
        )

    def start_early(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str]
    ) -> EarlyCall:
        """The call's container, pulled if need be and started in the background
        (runtime/container.EarlyCall); any trouble there shows at the call, which then calls
        the usual way and reports it."""
        image = self.image_of(model, entry)
        client = docker_client()
        ready = lambda: ensure_image(image, client)  # noqa: E731 - run in the start's thread
        return start_early(
            client, image, MODEL_PYTHON, env=env, ready=ready, **call_terms(model, entry)
        )

    def warm_model(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str], fingerprint: str
    ) -> WarmContainer:
        """A long-running container of the image serving light calls (a zygote, as locally);
        what a killed server left warm goes first (runtime/container.sweep_orphaned_warm)."""
        image = self.image_of(model, entry)
        ensure_image(image)
        client = docker_client(timeout=120)
        sweep_orphaned_warm(client)
        return WarmContainer(
            python=MODEL_PYTHON,
            runner=RUNNER,
            env=env,
            image=image,
            client=client,
            bounds=model_bounds(model),
            network=model.internet,
            fingerprint=fingerprint,
        )

    def start_app(
        self, model: ModelConfig, entry: PublishedTag, deployment_name: str
    ) -> ContainerAppServer:
        """The deployment's server: a confined container of the model's image (pulled with the
        registry's login if this engine lacks it), C/S's command and environment; app
        containers a killed front door left go first (runtime/app_container.py)."""
        from prefect_cs.runtime.app_container import sweep_orphaned_apps

        image = self.image_of(model, entry)
        client = docker_client(timeout=120)
        ensure_image(image, client)
        sweep_orphaned_apps(client)
        return ContainerAppServer(
            app_container_spec(model, entry, deployment_name, image),
            get_settings().home / "apps" / "run",
            client,
        ).start()


def app_container_spec(
    model: ModelConfig, entry: PublishedTag, deployment_name: str, image: str
) -> ContainerAppSpec:
    """C/S's command on the container's own loopback, from the app's folder in the image, with
    its environment (OWNER, TITLE, URL_BASE_PATHNAME, its declared secrets) and its bounds."""
    from prefect_cs.runtime.app_server import server_args, url_prefix
    from prefect_cs.runtime.environment import model_env
    from prefect_cs.tiers.local import app_origin

    prefix = url_prefix(model.owner, model.title, deployment_name)
    args = server_args(
        model.tech,
        app_location=model.app_location,
        callable_name=model.callable_name,
        prefix=prefix,
        cpu=model.cpu,
        origin=app_origin(),
    )
    env = {**model_env(model), "OWNER": model.owner, "TITLE": model.title}
    env["URL_BASE_PATHNAME"] = prefix
    return ContainerAppSpec(
        image=image,
        python=MODEL_PYTHON,
        args=tuple(args),
        app_dir=MODEL_SRC,
        bounds=model_bounds(model),
        network=model.internet,
        env=env,
        labels=call_labels(model, entry),
    )


def call_terms(model: ModelConfig, entry: PublishedTag) -> dict[str, Any]:
    """What every simulation call of the model's image runs under, started at its turn or
    ahead (call_in_image, start_early): its time limit, bounds, network and labels."""
    return {
        "timeout": model.time_limit,
        "bounds": model_bounds(model),
        "network": model.internet,
        "labels": call_labels(model, entry),
    }


def call_labels(model: ModelConfig, entry: PublishedTag) -> dict[str, str]:
    """Who a call's container belongs to: the model, its tag, and the flow run, when there is
    one."""
    from prefect.runtime import flow_run

    labels = {
        "cs.compute.studio/model": f"{model.owner}/{model.title}",
        "cs.compute.studio/tag": entry.tag,
    }
    if flow_run.id:
        labels["io.prefect.flow-run-id"] = str(flow_run.id)
    return labels
