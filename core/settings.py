"""Platform settings read from the environment (prefix `CS_`).

Settings that name blocks or pools live here rather than in a block so that a
worker, a flow run and the CLI all agree on them without a server round trip.
"""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CSSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CS_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".prefect-cs",
        description="Where virtualenvs, clones, undelivered results and logs live.",
    )
    tier: str = Field(default="local", description="local | docker | kubernetes")
    webapp_block: str = "cs-web-app/default"
    outputs_block: str = Field(
        default="local-file-system/cs-outputs",
        description="A Prefect filesystem block (LocalFileSystem or GcsBucket) for output zips.",
    )
    process_pool: str = "cs-process"
    docker_pool: str = "cs-docker"
    kubernetes_pool: str = "cs-kubernetes"
    redis_block: str | None = Field(
        default=None,
        description="A cs-redis block: when set, simulation inputs travel through Redis, not parameters.",
    )
    redis_inputs_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    base_image: str = Field(
        default="python:3.11-slim",
        description="Image the docker tier builds on; `deployments/docker/build-base-image.sh`"
        " makes `cs-base:bookworm` where no registry can be pulled from.",
    )
    registry: str | None = Field(
        default=None,
        description="Registry host[:port] for model images without credentials, e.g. 127.0.0.1:5000.",
    )
    registry_block: str | None = Field(
        default=None,
        description="Name of a prefect-docker DockerRegistryCredentials block; wins over `registry`.",
    )
    memory_by_container: bool = Field(
        default=False,
        description="Set in container jobs: the container's memory limit (cgroup) bounds the model,"
        " so the child gets no address-space rlimit.",
    )
    model_uid: int | None = Field(
        default=None,
        ge=1,
        description="Set in container jobs (which run as root): the uid model children run as.",
    )
    notify_attempts: int = Field(default=5, ge=1, le=20)
    notify_backoff_seconds: float = Field(default=1.0, ge=0)
    notify_timeout_seconds: float = Field(default=10.0, gt=0)

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def repos_dir(self) -> Path:
        return self.home / "repos"

    @property
    def undelivered_dir(self) -> Path:
        return self.home / "undelivered"


def get_settings() -> CSSettings:
    """Read afresh each time: tests and the CLI change the environment between calls."""
    return CSSettings()


# Settings a container job needs from the worker's side; TODO(settings tree): derive from field metadata.
_FORWARDED = (
    "CS_WEBAPP_BLOCK",
    "CS_OUTPUTS_BLOCK",
    "CS_NOTIFY_ATTEMPTS",
    "CS_NOTIFY_BACKOFF_SECONDS",
    "CS_NOTIFY_TIMEOUT_SECONDS",
    "CS_SECRETS_BACKEND",
    "CS_GCP_PROJECT",
    "CS_GCP_CREDENTIALS_BLOCK",
)


def forwarded_environment() -> dict[str, str]:
    """The CS_* variables set here that a job or inputs server on another tier must see too."""
    import os

    return {k: os.environ[k] for k in _FORWARDED if k in os.environ}
