"""Every `CS_*` environment variable the platform reads, in one tree.

Settings that name blocks or pools live here rather than in a block so that a
worker, a flow run and the CLI all agree on them without a server round trip.
One tree, because what a job or an inputs server on another tier must inherit
is decided field by field here (`json_schema_extra={"forward": True}`), not by
lists kept by hand beside each launcher, which drift. Secrets are `SecretStr`
and are never forwarded; only the Redis executor password (what a job holds)
is marked `job_credential` and reaches the local workers.

Nothing else reads `CS_*` from the environment, the CLI included: a command's
option defaults to None and the command reads the field (no typer `envvar=`,
which would also print a secret's value in --help). Ruff TID251 and
tests/test_settings.py check it: add a field here and read `get_settings()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from prefect_cs.core.errors import SettingsError
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FORWARD = {"forward": True}  # a job or inputs server on another tier gets it too
JOB_CREDENTIAL = {"job_credential": True}  # a secret a model job may hold (local workers get it)


class NotifySettings(BaseSettings):
    """How hard a job tries to reach the web app (prefix `CS_NOTIFY_`); jobs inherit it."""

    model_config = SettingsConfigDict(env_prefix="CS_NOTIFY_", extra="ignore")

    attempts: int = Field(default=5, ge=1, le=20, json_schema_extra=FORWARD)
    backoff_seconds: float = Field(default=1.0, ge=0, json_schema_extra=FORWARD)
    timeout_seconds: float = Field(default=10.0, gt=0, json_schema_extra=FORWARD)


class LimitsSettings(BaseSettings):
    """Caps on what model code and callers hand the platform (prefix `CS_LIMITS_`); jobs inherit
    them.

    Without them one model's output, result or prints grows the flow (or the shared
    inputs worker) without bound, and a deeply nested body or adjustment breaks the
    platform's own JSON handling (Python's recursion limit) where it should be the
    caller's error; a run over a cap ends in a FAIL naming the variable, a request
    over one in a 4xx naming it.
    """

    model_config = SettingsConfigDict(env_prefix="CS_LIMITS_", extra="ignore")

    output_bytes: int = Field(
        default=100 * 1024 * 1024,
        gt=0,
        description="Largest single output (decoded bytes) run_model may return.",
        json_schema_extra=FORWARD,
    )
    result_bytes: int = Field(
        default=300 * 1024 * 1024,
        gt=0,
        description="Largest whole run_model result (its JSON, as the child writes it).",
        json_schema_extra=FORWARD,
    )
    light_answer_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Largest answer of version / defaults / parse (its JSON line).",
        json_schema_extra=FORWARD,
    )
    stdout_tail_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="How much of a model's last printed output is kept (logged); the rest is read"
        " and dropped.",
        json_schema_extra=FORWARD,
    )
    output_count: int = Field(
        default=1000,
        gt=0,
        description="Most outputs (renderable and downloadable together) one run_model result may"
        " have; each is checked, zipped and listed for the web app.",
        json_schema_extra=FORWARD,
    )
    json_depth: int = Field(
        default=100,
        ge=8,
        le=200,
        description="Deepest nesting of JSON taken from outside: a cluster API or webhook request"
        " body (400 past it), and a simulation's or parse's adjustment and meta_param_dict (one"
        " FAIL naming the input). Real adjustments nest fewer than 10 levels; Prefect cannot"
        " store flow run parameters nested past 255 (pydantic's serializer), Python's json"
        " module breaks near 1,000.",
        json_schema_extra=FORWARD,
    )
    thumbnail_seconds: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="How long headless Chromium may take to render one output's thumbnail"
        " (runtime/render.py); past it the render is killed and that output gets none.",
        json_schema_extra=FORWARD,
    )
    thumbnail_memory_mib: int = Field(
        default=1024,
        ge=256,
        description="Memory (its cgroup: every Chromium process, its tmpfs and /dev/shm) one"
        " thumbnail render may use; a render measured near 310 MiB.",
        json_schema_extra=FORWARD,
    )
    thumbnail_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest PNG or JPEG output (width x height, read from its header) a"
        " thumbnail is made of: a decompression bomb is refused before anything decodes it.",
        json_schema_extra=FORWARD,
    )
    thumbnail_count: int = Field(
        default=20,
        ge=0,
        description="Most thumbnails one simulation gets (its first renderable outputs); 0: none.",
        json_schema_extra=FORWARD,
    )


class RedisSettings(BaseSettings):
    """Redis for job inputs (prefix `CS_REDIS_`): the block to use, or a connection by variables.

    The connection fields (None: the cs-redis block's default) let a model job
    build its config from CS_REDIS_EXECUTOR_PASSWORD alone, and the CLI create
    the ACL before any block exists. Passwords are secrets: none is forwarded.
    """

    model_config = SettingsConfigDict(env_prefix="CS_REDIS_", extra="ignore")

    block: str | None = Field(
        default=None,
        description="A cs-redis block: when set, simulation inputs travel through Redis, not"
        " parameters.",
    )
    inputs_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    url: str | None = Field(default=None, description="redis:// URL; overrides host, port and db.")
    host: str | None = None
    port: int | None = None
    db: int | None = None
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    scheduler_username: str | None = None
    scheduler_password: SecretStr | None = None
    executor_username: str | None = None
    executor_password: SecretStr | None = Field(
        default=None,
        description="The job's Redis identity: may only GET job-* keys.",
        json_schema_extra=JOB_CREDENTIAL,
    )
    initial_password: SecretStr | None = Field(
        default=None,
        description="The server's password before `redis init-acl` creates users; the default"
        " of its --initial-password.",
    )


class SecretsSettings(BaseSettings):
    """Which backend holds secrets and where a job takes them from (prefix `CS_`)."""

    model_config = SettingsConfigDict(env_prefix="CS_", extra="ignore")

    secrets_backend: str = Field(
        default="prefect", description="prefect | gcp", json_schema_extra=FORWARD
    )
    secrets_source: str | None = Field(
        default=None,
        description="`env`: declared secrets are in the job's environment"
        " (Docker block references); `pod` in a Kubernetes Job's flow container: they are only in"
        " the model container's (secretKeyRef), the flow holds none and sends none.",
    )
    gcp_project: str | None = Field(default=None, json_schema_extra=FORWARD)
    gcp_credentials_block: str | None = Field(default=None, json_schema_extra=FORWARD)
    gcp_secrets_endpoint: str | None = Field(
        default=None,
        description="Secret Manager endpoint; an http:// one is an emulator (anonymous, REST).",
        json_schema_extra=FORWARD,
    )


class GitHubSettings(BaseSettings):
    """Where the GitHub API is and which credentials block holds the token (prefix `CS_GITHUB_`)."""

    model_config = SettingsConfigDict(env_prefix="CS_GITHUB_", extra="ignore")

    api_url: str = Field(
        default="https://api.github.com", description="GitHub (Enterprise) API base."
    )
    credentials_block: str = Field(
        default="cs-github", description="Name of a prefect-github GitHubCredentials block."
    )
    status_context: str = "prefect-cs/publish"
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    attempts: int = Field(default=2, ge=1, le=5)


class WebhookSettings(BaseSettings):
    """The webhook receiver's settings (prefix `CS_WEBHOOK_`)."""

    model_config = SettingsConfigDict(env_prefix="CS_WEBHOOK_", extra="ignore")

    secret_name: str = Field(
        default="GITHUB_WEBHOOK_SECRET", description="Cluster-level secret holding the HMAC key."
    )
    publish_repo: str | None = Field(
        default=None, description="owner/name of the repository holding config/OWNER/TITLE.yaml."
    )
    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    retention_days: float = Field(default=7.0, gt=0, description="How long delivery ids are kept.")
    max_deliveries: int = Field(default=200_000, gt=0, description="Most delivery ids kept.")
    models_cache_seconds: float = Field(default=10.0, ge=0)
    request_window_seconds: float = Field(
        default=600.0,
        ge=0,
        description="One publish per model, tag and steps within this window (a release and its"
        " tag push are two deliveries); 0 turns it off.",
    )
    db_path: Path | None = Field(
        default=None, description="Default: $CS_HOME/webhook/deliveries.sqlite3"
    )
    publishes_per_hour: int = Field(
        default=30,
        ge=0,
        description="Most publishes the receiver starts for one model in any hour (a key holder"
        " cannot flood the pool); later deliveries get 202 with the reason; 0 turns it off.",
    )
    publish_repo_secret_name: str | None = Field(
        default=None,
        description="Cluster secret holding the publish repository's own HMAC key: when set, its"
        " pull requests are accepted only signed with it (the cluster key no longer does).",
    )


class ApiSettings(BaseSettings):
    """The cluster API the web app calls (prefix `CS_API_`): where it listens, its caps, its key."""

    model_config = SettingsConfigDict(env_prefix="CS_API_", extra="ignore")

    host: str = Field(
        default="127.0.0.1", description="Interface `prefect-cs api serve` listens on."
    )
    port: int = Field(default=8790, gt=0, lt=65536, description="Its port (`stack start` too).")
    secret_name: str = Field(
        default="CLUSTER_API_TOKEN",
        description="Cluster secret holding the bearer token the web app sends.",
    )
    auth: Literal["token", "none"] = Field(
        default="token",
        description="token: a bearer token on every call (`api serve`, `stack start`); none: no"
        " credentials, for C/S 1.6/1.7 web apps that send none (logged loudly at start; on a"
        " loopback interface only unless CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK).",
    )
    allow_no_auth_off_loopback: bool = Field(
        default=False,
        description="Lets CS_API_AUTH=none listen on an interface other than loopback (a private"
        " network the web app shares with the cluster, and nothing else can reach).",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest request body; larger ones get 413."
    )
    submit_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads creating the flow runs of acknowledged sims; the rest of a burst"
        " waits its turn on the API's disk (a SQLite server locks up under dozens of"
        " concurrent writers).",
    )
    jwt_secret_name: str = Field(
        default="CLUSTER_API_JWT_KEY",
        description="Cluster secret holding the key v1 access tokens are signed with (HS256;"
        " made at the API's first start when unset; rotating it ends every token).",
    )
    login_seconds: int = Field(
        default=3600,
        ge=300,
        le=8 * 24 * 3600,
        description="Lifetime of a v1 access token (`/api/v1/login/access-token`). The answer's"
        " expires_at is 120 s earlier: C/S's web app renews only 60 s after it.",
    )
    login_failures_per_user: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Failed v1 logins one user name may have in a row before 429: the burst of a"
        " token bucket refilled over CS_API_LOGIN_FAILURE_WINDOW seconds.",
    )
    login_failures_per_address: int = Field(
        default=30,
        ge=1,
        le=100_000,
        description="The same for one client address, whatever the names (behind a proxy all"
        " clients share its address: raise it there).",
    )
    login_failure_window: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds in which a bucket refills whole; one failure is forgiven every"
        " window/burst seconds, so no one is locked out for longer than that after a burst.",
    )
    config_ttl_seconds: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="How long the API answers from a model config it read (a promote is seen"
        " within this; a newly published tag at once).",
    )


class AppsSettings(BaseSettings):
    """Interactive model apps (prefix `CS_APPS_`): Dash, Bokeh and Streamlit servers on demand,
    behind the platform's front door (services/app_proxy.py), stopped when idle."""

    model_config = SettingsConfigDict(env_prefix="CS_APPS_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface the front door listens on.")
    port: int = Field(default=8795, gt=0, lt=65536, description="The front door's port.")
    public_url: str = Field(
        default="",
        description="The front door as users' browsers reach it (e.g. https://viz.example.org);"
        " signed links and Bokeh's allowed websocket origin use it. Unset: http://host:port.",
    )
    idle_seconds: float = Field(
        default=900,
        gt=0,
        description="A deployment with no request for this long is stopped and freed.",
    )
    max_per_model: int = Field(
        default=5, ge=1, description="Running deployments of one model at most (more: 429)."
    )
    max_running: int = Field(
        default=20, ge=1, description="Running deployments on this pool at most (more: 429)."
    )
    start_seconds: float = Field(
        default=120,
        gt=0,
        description="A server that does not answer HTTP within this after its start is stopped"
        " and its start fails (publish's smoke start too).",
    )
    link_seconds: int = Field(
        default=600, gt=0, description="How long a signed link the web app hands a user opens."
    )
    link_key: SecretStr | None = Field(
        default=None,
        description="The key that signs app links and cookies, where the front door and the"
        " cluster API run apart (Kubernetes: a secretKeyRef to Secret cs-app-link-key, both"
        " holding the same). Unset: $CS_HOME/apps/link-key, made at first use (0600).",
    )


class StackSettings(BaseSettings):
    """What `prefect-cs stack start` runs (prefix `CS_STACK_`): the server's database, the workers.

    `postgresql` is the scaled server: a private PostgreSQL cluster under
    `$CS_HOME/postgres` and a private Redis for Prefect's messaging, both on
    unix sockets only the platform's user can open; SQLite and in-memory
    messaging hold one server process and fail under bursts (503s).
    """

    model_config = SettingsConfigDict(env_prefix="CS_STACK_", extra="ignore")

    database: Literal["sqlite", "postgresql"] = Field(
        default="sqlite",
        description="sqlite | postgresql (with Redis messaging); `stack start --database`.",
    )
    workers: int = Field(
        default=1, ge=1, le=16, description="Process workers on the one pool; `--workers`."
    )
    standin_port: int = Field(
        default=8765,
        gt=0,
        lt=65536,
        description="Port of the web app stand-in the stack starts when no web app is set.",
    )
    postgres_user: str = Field(
        default="postgres",
        description="The system user PostgreSQL runs as when the stack starts as root"
        " (PostgreSQL refuses root).",
    )


class CSSettings(BaseSettings):
    """The root of the tree (prefix `CS_`): home, tier, blocks, pools, images, per-job switches."""

    model_config = SettingsConfigDict(env_prefix="CS_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".prefect-cs",
        description="Where virtualenvs, clones, undelivered results and logs live.",
        json_schema_extra=FORWARD,
    )
    tier: str = Field(default="local", description="local | docker | kubernetes")
    webapp_block: str = Field(default="cs-web-app/default", json_schema_extra=FORWARD)
    webapp_token: SecretStr | None = Field(
        default=None,
        description="The token `prefect-cs webapp set` saves in the web app block (without"
        " --token-stdin); flows read the block, never this.",
    )
    outputs_block: str = Field(
        default="local-file-system/cs-outputs",
        description="A Prefect filesystem block (LocalFileSystem or GcsBucket) for output zips.",
        json_schema_extra=FORWARD,
    )
    process_pool: str = "cs-process"
    docker_pool: str = "cs-docker"
    kubernetes_pool: str = "cs-kubernetes"
    pool_concurrency: int | None = Field(
        default=None,
        ge=0,
        description="Runs a work pool starts at once; the excess waits as Scheduled/Late runs."
        " Unset: sized to this machine (process: its cores; docker: cores and memory at 2 GiB"
        " a run; kubernetes: no limit, the cluster's quotas decide). 0: no limit.",
    )
    base_image: str = Field(
        default="python:3.11-slim",
        description="Image the docker tier builds on; `infra/docker/build-base-image.sh`"
        " makes `cs-base:bookworm` where no registry can be pulled from.",
    )
    registry: str | None = Field(
        default=None,
        description="Registry host[:port] for model images, for a registry without auth (the local"
        " 127.0.0.1:5000 asks for a login: use `registry_block`).",
    )
    registry_block: str | None = Field(
        default=None,
        description="Name of a prefect-docker DockerRegistryCredentials block"
        " (`prefect-cs docker up` saves the local registry's login as `cs-registry`); wins over"
        " `registry`.",
    )
    platform_image: str | None = Field(
        default=None,
        description="The platform's own image, by digest (`prefect-cs k8s platform-image` builds,"
        " pushes and prints it): the kubernetes tier runs each Job's flow in it, never in a"
        " model's image.",
    )
    exchange_dir: Path | None = Field(
        default=None,
        description="Set in a Kubernetes Job's flow container: the emptyDir it shares with the"
        " model container (request.json in, response.json out; runtime/pod_exchange.py).",
    )
    memory_by_container: bool = Field(
        default=False,
        description="Set in container jobs: the container's memory limit (cgroup) bounds the model,"
        " so the child gets no address-space rlimit.",
    )
    model_uid: int | None = Field(
        default=None,
        ge=1,
        description="The uid model code runs as when the flow is root (default 10001 under"
        " bubblewrap; container jobs set it).",
    )
    sandbox: Literal["bwrap", "uid", "none"] = Field(
        default="bwrap",
        description="How model code is confined (runtime/sandbox.py): bwrap on the process"
        " tier, uid in container jobs, none for development only (every call warns).",
    )
    sandbox_open_networks: list[str] = Field(
        default_factory=list,
        description="Private ranges (as runtime/usernet.py FENCED_NETWORKS writes them, e.g."
        " 10.0.0.0/8) that model code with the internet may reach after all: a package mirror or"
        " proxy on a private address. Empty: none.",
        json_schema_extra=FORWARD,
    )
    model_python: Path | None = Field(
        default=None,
        description="The Python model virtualenvs are made from (default: the platform's, or the"
        " system's when the model user cannot reach the platform's).",
    )
    inputs_model: str | None = Field(
        default=None,
        description="OWNER/TITLE: set in a model's own inputs server container; the default of"
        " `prefect-cs inputs serve --model`.",
    )
    local_repo_prefixes: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Absolute folders under which a model's repo_url may be a local path (or a"
        " file:// URL): the quickstart's and the tests' sample repositories. Empty: only https://,"
        " ssh://, git:// and user@host:path repositories. A JSON list or paths separated by ':'.",
        json_schema_extra=FORWARD,
    )
    chromium: str = Field(
        default="/usr/bin/chromium",
        description="The headless browser thumbnails of renderable outputs are made with (Debian's"
        " `chromium`); it runs in the model sandbox, without network, as the model's uid.",
        json_schema_extra=FORWARD,
    )
    notify: NotifySettings = Field(default_factory=NotifySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    apps: AppsSettings = Field(default_factory=AppsSettings)

    @field_validator("local_repo_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: Any) -> Any:
        """`["/a", "/b"]` or `/a:/b` (as PATH is written); each must be absolute, since a relative
        prefix would mean a different folder in every process's working directory."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(os.pathsep)
        if isinstance(value, list):
            value = [p for p in value if str(p).strip()]
            relative = [str(p) for p in value if not Path(str(p)).is_absolute()]
            if relative:
                raise ValueError(f"prefixes must be absolute paths, got {relative}")
        return value

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def repos_dir(self) -> Path:
        return self.home / "repos"

    @property
    def undelivered_dir(self) -> Path:
        return self.home / "undelivered"

    @property
    def auth_file(self) -> Path:
        """The local stack's Prefect API login (`user:password`, mode 0600), made at its first
        start."""
        return self.home / "prefect-auth"


def get_settings() -> CSSettings:
    """Read afresh each time: tests and the CLI change the environment between calls."""
    try:
        return CSSettings()
    except ValidationError as exc:
        raise SettingsError(explain(exc)) from exc


def explain(exc: ValidationError) -> str:
    """Each invalid value by its variable name, so the message says what to change."""
    prefix = next(
        (c.model_config["env_prefix"] for c in _sections(CSSettings) if c.__name__ == exc.title),
        "CS_",
    )
    fields, problems = setting_fields(), []
    for error in exc.errors():
        name = (prefix + "_".join(map(str, error["loc"]))).upper()
        info = fields.get(name)
        shown = "" if info is None or is_secret(info) else f"={error.get('input')!r}"
        problems.append(f"{name}{shown}: {error['msg']}")
    return "invalid setting " + "; ".join(problems) + ": fix or unset the variable"


# ---- walking the tree -----------------------------------------------------------


def _sections(cls: type[BaseSettings]) -> Iterator[type[BaseSettings]]:
    """The root and every sub-settings class under it."""
    yield cls
    for info in cls.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            yield from _sections(info.annotation)


def setting_fields(cls: type[BaseSettings] = CSSettings) -> dict[str, FieldInfo]:
    """Every variable of the tree by its name (e.g. `CS_REDIS_BLOCK`), with its field."""
    return {
        (section.model_config["env_prefix"] + name).upper(): info
        for section in _sections(cls)
        for name, info in section.model_fields.items()
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings))
    }


def _set_values(settings: BaseSettings) -> Iterator[tuple[str, FieldInfo, Any]]:
    """(variable, field, value) for each setting given in the environment, sub-settings included."""
    prefix = settings.model_config["env_prefix"]
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, BaseSettings):
            yield from _set_values(value)
        elif name in settings.model_fields_set and value is not None:
            yield (prefix + name).upper(), info, value


def _marked(info: FieldInfo, key: str) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(key))


def is_secret(info: FieldInfo) -> bool:
    return info.annotation is SecretStr or SecretStr in get_args(info.annotation)


def as_env(value: Any) -> str:
    """A setting's value as an environment variable (what the receiving side parses back)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return json.dumps([str(item) for item in value])
    return str(value)


def forwarded_environment() -> dict[str, str]:
    """The settings marked `forward` that are set here: what a container job or inputs server
    on another tier must see too. Never a secret."""
    env = {}
    for name, info, value in _set_values(get_settings()):
        if _marked(info, "forward"):
            if is_secret(info):
                raise TypeError(f"{name} is a secret and must not be marked forward")
            env[name] = as_env(value)
    return env


def worker_settings_environment() -> dict[str, str]:
    """Every setting set here that a worker on this machine may pass to its jobs: no secret
    but those a job holds (`job_credential`: the Redis executor password)."""
    return {
        name: as_env(value)
        for name, info, value in _set_values(get_settings())
        if not is_secret(info) or _marked(info, "job_credential")
    }
