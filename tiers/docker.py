"""The Docker tier: one image per model and tag, pushed to a registry, run by the Docker pool.

The image is built from tiers/Dockerfile (package data). Layers go from what
every model shares to what changes most, so the Docker build cache does the
work of a re-publish:

1. the base image (`CS_BASE_IMAGE`) and the host's CA bundle;
2. the platform venv `/opt/cs/platform` with the project's pinned dependencies
   (Prefect and its collections; the flow runs there, the Docker worker
   starting it with `python -m prefect.engine`);
3. the model venv `/opt/cs/model` with cs-kit and pytest (same for every model);
4. the model's dependencies, as root as on Compute Studio: the Debian packages
   its config lists (`system_packages`), then its `install.sh` alone (or the
   install override), run as on every tier (tiers/base.py); one that calls
   apt-get gets the package lists first;
5. the platform's own wheel (small; a platform change keeps layers 1-4);
6. the model's code (`cs-config`) and the child runner.

A code-only change rebuilds only layer 6. The image is built under a
throw-away tag, tested, and only then tagged `<registry>/<owner>_<title>:<tag>`
and pushed, so a failing build never replaces the image a deployment uses.
Deployments and jobs name the image by the digest the push returned
(`<registry>/<owner>_<title>@sha256:…`), never by its tag: a tag pushed again
later (by a rebuild, or by anyone who can push) does not change what runs.

The registry asks for a login on every push and pull (the local one on
127.0.0.1:5000: htpasswd, deployments/docker/start-engine.sh), so model code
that reaches it can neither read nor overwrite another model's image. The login
lives in a DockerRegistryCredentials block (CS_REGISTRY_BLOCK; `prefect-cs docker
up` saves the local registry's as `cs-registry`): publish sends it to the engine
with each push (the SDK's auth_config, never a `docker login` or a config file),
and deployments name the block, which the Docker worker resolves when it pulls.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag, check_system_package
from prefect_cs.core.errors import StepFailed
from prefect_cs.core.names import image_name, image_tag, model_code_secrets, secret_env_name
from prefect_cs.core.settings import forwarded_environment, get_settings
from prefect_cs.flows.runtime.confinement import Bounds
from prefect_cs.flows.runtime.container import (
    call_in_image,
    cli_flags,
    container_options,
    model_environment,
)
from prefect_cs.flows.runtime.environment import RUNTIME_DIR
from prefect_cs.flows.runtime.model_process import CHILD_SCRIPT
from prefect_cs.tiers.base import INSTALL_SCRIPT, JobVariables, Logger, Tier, system_package_lines
from prefect_cs.tiers.local import CA_BUNDLE, TEST_REQUIREMENTS
from prefect_cs.tiers.steps import run_step
from prefect_cs.tiers.wheel import platform_requirements, platform_wheel

PLATFORM_VENV = "/opt/cs/platform"
MODEL_VENV = "/opt/cs/model"
MODEL_SRC = "/opt/cs/src/cs-config"
MODEL_PYTHON = f"{MODEL_VENV}/bin/python"
MODEL_UID = 10001  # model children in containers: not root, not the flow's user
BUILD_TIMEOUT = 1800
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
INSTALL_DIR = "/opt/cs/install"  # where install.sh runs (tiers/Dockerfile), kept in the image


def image_repository(registry: str, model: ModelConfig) -> str:
    """`<registry>/<owner>_<title>`, cleaned to what registries accept, one per model (core/names.py)."""
    return f"{registry.rstrip('/')}/{image_name(model.owner, model.title)}"


LOCAL_REGISTRY_CREDENTIALS = Path("/etc/prefect-cs/registry/credentials")
"""The login deployments/docker/start-engine.sh makes for the registry on 127.0.0.1:5000:
root only (0600 in a 0700 folder), JSON `{registry_url, username, password}`."""
LOCAL_REGISTRY_BLOCK = "cs-registry"
"""The DockerRegistryCredentials block `prefect-cs docker up` saves that login in."""
AUTH_REFUSED = ("no basic auth credentials", "unauthorized", "authentication required")


@dataclass
class Registry:
    """Where images go: a host[:port], with credentials when a DockerRegistryCredentials block names them."""

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
                f" set CS_REGISTRY_BLOCK={LOCAL_REGISTRY_BLOCK} after `prefect-cs docker up` (it saves"
                " the login of the local registry in that block), or name your registry's"
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
            " (deployments/docker/start-engine.sh makes it)"
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
            f"cannot reach the Docker engine ({exc}): start dockerd (see deployments/docker/start-engine.sh)"
            " or set DOCKER_HOST"
        ) from exc
    return client


# ---- the build context --------------------------------------------------------------


APT_ENV = "DEBIAN_FRONTEND=noninteractive"


def apt_install_step(packages: list[str]) -> str:
    """The Dockerfile line that installs a model's system packages as root, or a comment.
    Names are checked again here (they were when the config was made): each is one word of
    Debian's package-name alphabet, so nothing else can reach the shell."""
    if not packages:
        return "# system_packages: none"
    names = " ".join(check_system_package(name) for name in packages)
    return (
        f"RUN apt-get update -q && {APT_ENV} apt-get install -y -q --no-install-recommends"
        f" {names} && rm -rf /var/lib/apt/lists/*"
    )


def dockerfile(system_packages: list[str] | None = None, install_uses_apt: bool = False) -> str:
    """tiers/Dockerfile with this module's paths and the model's system packages filled in."""
    template = resources.files("prefect_cs.tiers").joinpath("Dockerfile").read_text()
    apt_lists = f"apt-get update -q && export {APT_ENV} && " if install_uses_apt else ""
    return (
        template.replace("{system_packages}", apt_install_step(system_packages or []))
        .replace("{apt_lists}", apt_lists)
        .replace("{platform}", PLATFORM_VENV)
        .replace("{model}", MODEL_VENV)
        .replace("{src}", MODEL_SRC)
        .replace("{install}", INSTALL_DIR)
        .replace("{runtime}", RUNTIME_DIR)
        .replace("{test_requirements}", " ".join(TEST_REQUIREMENTS))
    )


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


def ensure_image(image: str) -> None:
    """Pull `image` unless the engine has it, with the registry's login (CS_REGISTRY_BLOCK):
    what containers started outside a worker (the inputs server) need on a registry with auth."""
    import docker

    client = docker_client()
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
    """What a model's deployment sets in work_pools/docker.json; the pool's defaults do the rest
    (auto_remove, stream_output, no privileges, the container's name and labels)."""

    image: str
    command: str
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"]
    mem_limit: str
    memswap_limit: str
    nano_cpus: int
    env: dict[str, str]
    volumes: list[str]
    registry_credentials: str | None = None


class DockerTier(Tier):
    """Builds, tests and pushes a model's image; deploys it on the Docker pool.

    Its own: the environment is an image built under a throw-away tag (never
    pushed before its tests pass), tests and get_version() run in `docker run
    --rm --network none`, push tags and pushes it, discard drops the build tag.
    """

    name = "docker"
    pool_type = "docker"
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
            (context / "platform" / "wheels").mkdir(parents=True)
            (context / "platform" / "requirements.txt").write_text(
                "\n".join(platform_requirements()) + "\n"
            )
            shutil.copy2(platform_wheel(logger), context / "platform" / "wheels")
            shutil.copytree(
                cs_config,
                context / "cs-config",
                ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"),
            )
            shutil.copy2(CHILD_SCRIPT, context / "child.py")
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
        """In a container of the new image as every model call runs (flows/runtime/container.py):
        uid 10001, read-only, no capabilities, the model's own bounds, no network unless the
        model declares `internet`; never the platform's code."""
        options = container_options(
            model_bounds(model), model.internet, model_environment(MODEL_PYTHON)
        )
        tests = f"{MODEL_SRC}/cs_config/tests"
        run_in_image(
            "model-tests",
            entry.image or "",
            [
                MODEL_PYTHON,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                MODEL_SRC,
                tests,
            ],
            logger,
            timeout=max(600, model.time_limit * 5),
            hint="The model's own tests failed inside its new image; nothing was pushed and the previous tag keeps serving.",
            flags=cli_flags(options),
        )

    def get_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() in a container of the new image, with the platform's runner bound in
        read-only (flows/runtime/container.py): no platform code of the image runs."""
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

    def image_of(self, model: ModelConfig, entry: PublishedTag) -> str:
        if not entry.image:
            raise ValueError(
                f"{model.owner}/{model.title}@{entry.tag} has no image: the {self.name} tier runs"
                f" the image publish pushed; publish the tag with CS_TIER={self.name}"
            )
        return entry.image

    def variables(self, model: ModelConfig, entry: PublishedTag) -> DockerJobVariables:
        """The image, cpu and memory limits, mounts, and secrets as block references (never values)."""
        limit = f"{model.memory_limit_mib}m"
        return DockerJobVariables(
            image=self.image_of(model, entry),
            # The engine itself rather than `prefect flow-run execute`, which starts the CLI and
            # then the engine in a second interpreter: one Python start-up less per simulation.
            command=f"{PLATFORM_VENV}/bin/python -m prefect.engine",
            image_pull_policy="IfNotPresent",
            mem_limit=limit,
            memswap_limit=limit,
            nano_cpus=int(model.cpu * 1_000_000_000),
            env=container_env(model),
            volumes=container_volumes(),
            registry_credentials=(
                registry_credentials_reference() if get_settings().registry_block else None
            ),
        )


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
    env["CS_SANDBOX"] = "uid"  # Docker's seccomp profile forbids bubblewrap's namespaces
    references = secret_references(model)
    if references:  # the flow then reads declared secrets only from these (runtime.environment)
        env["CS_SECRETS_SOURCE"] = "env"
    env.update(references)
    return env


def secret_references(model: ModelConfig) -> dict[str, str]:
    """`CS_SECRET_<name>: {{ prefect.blocks.secret.<id> }}` per declared secret: the model's own,
    else the cluster's."""
    names = model_code_secrets(model.secrets)  # the webhook key a model may declare stays out
    if not names:
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
    for name in names:
        if name in own:
            ident = secret_id(parse_scope(scope), name)
        elif name in cluster:
            ident = secret_id(None, name)
        else:
            raise StepFailed(
                f"model {scope} declares secret {name!r}, which is set neither for the model nor"
                f" for the cluster: run `prefect-cs models -n {scope} secrets set --name {name}`"
            )
        refs[secret_env_name(name)] = "{{ prefect.blocks.secret." + ident + " }}"
    return refs


def container_volumes() -> list[str]:
    """Host folders the flow in the container writes: a LocalFileSystem outputs block, kept results."""
    from prefect.filesystems import LocalFileSystem
    from prefect_cs.core.blocks import load_outputs_storage

    settings = get_settings()
    folders = [settings.undelivered_dir]
    storage = load_outputs_storage()
    if isinstance(storage, LocalFileSystem):
        folders.append(Path(storage.basepath))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # the flow (root) writes there; the model's uid may not even list it
    return [f"{folder}:{folder}" for folder in folders]
