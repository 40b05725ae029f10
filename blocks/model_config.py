"""The model registry entry: one `ModelConfig` block document per model.

Everything the platform knows about a model lives in one document so that a
publish, a rollback and a simulation all read the same record, and the Prefect
UI shows it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from prefect.blocks.core import Block
from prefect_cs.core.errors import NotFound
from prefect_cs.core.names import (
    check_declared_secret,
    check_name,
    check_repo_url,
    check_tag,
    slug,
)
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

MEMORY_RE = re.compile(r"^\d+(\.\d+)?(Mi|Gi)$")
# Debian policy 5.6.1: lower case letters, digits, '+', '-', '.'; two characters at least, the
# first alphanumeric. Nothing else reaches the Dockerfile's apt-get line or a shell.
SYSTEM_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,99}$")
MAX_SYSTEM_PACKAGES = 100
APP_LOCATION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$")


def check_system_package(name: str) -> str:
    """A Debian binary package name, or a ValueError naming the rule (no options, versions,
    architectures or shell characters: the name is written into an apt-get command)."""
    if not isinstance(name, str) or not SYSTEM_PACKAGE_RE.fullmatch(name):
        raise ValueError(
            f"invalid system package {name!r}: use a Debian package name (lower case letters,"
            " digits, '+', '-', '.', starting with a letter or digit, e.g. 'libgl1'),"
            " without a version or an architecture"
        )
    return name


def mebibytes(size: str) -> int:
    """'512Mi' or '2Gi' (checked by MEMORY_RE) in MiB."""
    number, unit = float(size[:-2]), size[-2:]
    return int(number * (1024 if unit == "Gi" else 1))


# Block schema ids this process registered (ModelConfig.save_model).
_SCHEMAS_REGISTERED_HERE: set = set()


class PublishedTag(BaseModel):
    """One environment that passed the model's tests and can serve simulations."""

    tag: str
    tier: Literal["local", "docker", "kubernetes"] = "local"
    python: str = Field(description="The model environment's python, as seen where the flow runs.")
    image: str | None = Field(default=None, description="Image reference on container tiers.")
    version: str | None = Field(default=None, description="get_version() at publish time.")
    sandbox_binds: list[str] = Field(
        default_factory=list,
        description="Folders a sandbox of this environment binds read-only besides the venv (the"
        " interpreter it was made from), recorded by the platform before any model code ran:"
        " never read from the venv's pyvenv.cfg or symlinks, which the model could rewrite.",
    )
    published_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="When the tag was first published on this tier; a re-publish keeps it.",
    )
    commit: str | None = Field(
        default=None,
        description="The commit the clone resolved the tag to (what was built and tested); the"
        " commit status of a later promote goes on it.",
    )


class ModelConfig(Block):
    """A published (or to-be-published) Compute Studio model app."""

    _block_type_name = "CS Model Config"
    _block_type_slug = "cs-model-config"
    _description = "A model app of the platform: where its code is, its resources and its tags."

    owner: str
    title: str
    repo_url: str = Field(
        description="The git repository: https://, ssh://, git:// or user@host:path; a local"
        " path only under the operator's CS_LOCAL_REPO_PREFIXES (checked at register and clone)."
    )
    repo_tag: str = Field(default="main", description="The git tag (or branch) to publish.")
    cs_config_path: str = Field(
        default="cs-config", description="Folder holding install.sh and cs_config."
    )
    install_override: str | None = Field(
        default=None,
        description=(
            "Replaces install.sh: either pip requirements (one per line) or a shell command"
            " starting with 'run:'. For apps whose install.sh needs conda where conda is absent."
        ),
    )
    system_packages: list[str] = Field(
        default_factory=list,
        description=(
            "Debian packages the model needs (e.g. libgl1), for an install.sh that cannot run as"
            " is (use install_override for the rest). Image tiers apt-get install them as root"
            " in the build; on the local tier publish checks that they are installed."
        ),
    )
    cpu: float = Field(default=1.0, gt=0, le=64)
    memory: str = Field(default="2Gi", description="Memory request, e.g. '512Mi' or '4Gi'.")
    memory_limit_factor: float = Field(
        default=1.25, ge=1.0, le=4.0, description="limit = request x factor"
    )
    pids: int = Field(
        default=512,
        ge=16,
        le=32768,
        description="At most this many processes and threads at once in one model call (the"
        " kernel's pids limit); a fork bomb stops there.",
    )
    disk: str = Field(
        default="2Gi",
        description="Writable disk of one model call (its work folder, a size-limited tmpfs"
        " counted in its memory too), e.g. '512Mi' or '2Gi'.",
    )
    expected_task_time: int = Field(
        default=20, gt=0, description="Seconds a simulation usually takes."
    )
    time_limit: int = Field(
        default=600, gt=0, le=24 * 3600, description="Seconds before a run is killed."
    )
    secrets: list[str] = Field(
        default_factory=list, description="Names of model secrets given to its jobs."
    )
    max_concurrent_simulations: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="At most this many of the model's simulations run at once; the rest wait"
        " in Prefect (its deployment's concurrency limit). None: only the pool's limit.",
    )
    internet: bool = Field(
        default=False,
        description="The model's code needs the internet when it runs (downloads data): its"
        " sandbox then has network, still without the platform's credentials.",
    )
    webapp: str | None = Field(
        default=None,
        description="The web app block (`cs-web-app/<name>`) this model's results go to: set by"
        " the sync of the v1 web app (cluster user) that owns the project; unset: the cluster's"
        " web app (CS_WEBAPP_BLOCK). Never taken from a projects list.",
    )
    tech: Literal["cs-config", "dash", "bokeh", "streamlit"] = Field(
        default="cs-config",
        description="cs-config: simulations of cs_config.functions; dash, bokeh, streamlit: an"
        " interactive app, one server per deployment (C/S's `tech`).",
    )
    app_location: str | None = Field(
        default=None,
        description="Dash: the module holding the app (default cs_config.functions); Bokeh and"
        " Streamlit: the script or folder to serve, relative to the cs-config folder.",
    )
    callable_name: str | None = Field(
        default=None, description="Dash: the WSGI callable in app_location (e.g. `server`)."
    )
    staging_tag: str | None = None
    latest_tag: str | None = Field(
        default=None, description="The promoted tag: what simulations use by default."
    )
    published_tags: list[PublishedTag] = Field(default_factory=list)

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        return check_name("owner", value)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return check_name("title", value)

    @field_validator("repo_url")
    @classmethod
    def _repo_url(cls, value: str) -> str:
        return check_repo_url(value)

    @field_validator("repo_tag")
    @classmethod
    def _repo_tag(cls, value: str) -> str:
        return check_tag(value)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        return [check_declared_secret(name) for name in value]

    @field_validator("system_packages")
    @classmethod
    def _system_packages(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_SYSTEM_PACKAGES:
            raise ValueError(
                f"{len(value)} system packages: at most {MAX_SYSTEM_PACKAGES}; build an image"
                " of your own (CS_BASE_IMAGE) for more"
            )
        return list(dict.fromkeys(check_system_package(name) for name in value))

    @field_validator("memory", "disk")
    @classmethod
    def _memory(cls, value: str, info: ValidationInfo) -> str:
        if not MEMORY_RE.match(value):
            raise ValueError(
                f"invalid {info.field_name} {value!r}: use a number with Mi or Gi, e.g. '512Mi'"
                " or '4Gi'"
            )
        return value

    @field_validator("app_location")
    @classmethod
    def _app_location(cls, value: str | None) -> str | None:
        if value is not None and not APP_LOCATION_RE.fullmatch(value) or ".." in (value or ""):
            raise ValueError(
                f"invalid app_location {value!r}: a module (cs_config.app) or a relative path"
                " (cs_config/app.py) of letters, digits, '_', '-', '.' and '/', without '..'"
            )
        return value

    @field_validator("callable_name")
    @classmethod
    def _callable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"invalid callable_name {value!r}: a Python name, e.g. 'server'")
        return value

    @model_validator(mode="after")
    def _app_fields(self) -> ModelConfig:
        if self.tech in ("bokeh", "streamlit") and not self.app_location:
            raise ValueError(f"tech {self.tech} needs app_location: the script to serve")
        if self.tech == "dash" and not self.callable_name:
            raise ValueError("tech dash needs callable_name: the WSGI callable, e.g. 'server'")
        return self

    @property
    def interactive(self) -> bool:
        return self.tech != "cs-config"

    @model_validator(mode="after")
    def _expected_within_limit(self) -> ModelConfig:
        if self.expected_task_time > self.time_limit:
            raise ValueError(
                f"expected_task_time ({self.expected_task_time}s) exceeds time_limit"
                f" ({self.time_limit}s):"
                " raise time_limit or lower expected_task_time"
            )
        return self

    @property
    def slug(self) -> str:
        return slug(self.owner, self.title)

    @property
    def memory_mib(self) -> int:
        return mebibytes(self.memory)

    @property
    def disk_mib(self) -> int:
        return mebibytes(self.disk)

    @property
    def memory_limit_mib(self) -> int:
        return int(self.memory_mib * self.memory_limit_factor)

    def published(self, tag: str | None = None) -> PublishedTag:
        """The environment for `tag`, or the promoted one; a clear error if there is none."""
        wanted = tag or self.latest_tag
        if wanted is None:
            raise NotFound(f"{self.owner}/{self.title} has no promoted tag: publish it first")
        for entry in reversed(self.published_tags):
            if entry.tag == wanted:
                return entry
        known = ", ".join(e.tag for e in self.published_tags) or "none"
        raise NotFound(
            f"{self.owner}/{self.title} has no published tag {wanted!r} (published: {known})"
        )

    def record(self, entry: PublishedTag) -> None:
        """Keep one entry per tag and tier. A new one goes last; a re-publish (e.g. a pull
        request staged again) replaces its entry in place and keeps its first `published_at`:
        publish order, which tells non-version tags apart for the older-tag rule, never moves."""
        for index, old in enumerate(self.published_tags):
            if (old.tag, old.tier) == (entry.tag, entry.tier):
                kept = entry.model_copy(update={"published_at": old.published_at})
                tags = self.published_tags
                self.published_tags = [*tags[:index], kept, *tags[index + 1 :]]
                return
        self.published_tags = [*self.published_tags, entry]

    @classmethod
    def for_model(cls, owner: str, title: str) -> ModelConfig:
        """Load a model's document, naming the fix when it is missing."""
        check_name("owner", owner)
        check_name("title", title)
        try:
            return cls.load(slug(owner, title), _sync=True)
        except ValueError as exc:
            raise NotFound(
                f"model {owner}/{title} is not registered:"
                f" run `prefect-cs models register config/{owner}/{title}.yaml`"
            ) from exc

    def save_model(self) -> None:
        """Write the record back. Block.save registers the block type and schema again and
        builds the class's JSON schema each time (0.4 s or more per save on the SQLite server;
        a publish saves three times), so once this process has registered the schema the record
        it loaded is written in one call with the same data (`document_data`). A record stored
        under another schema still goes the long way, which moves it to the current one."""
        schema = type(self)._block_schema_id
        if self._block_document_id is None or schema not in _SCHEMAS_REGISTERED_HERE:
            self.save(self.slug, overwrite=True, _sync=True)
            _SCHEMAS_REGISTERED_HERE.add(type(self)._block_schema_id)
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import BlockDocumentUpdate

        update = BlockDocumentUpdate(block_schema_id=schema, data=self.document_data())
        with get_client(sync_client=True) as client:
            client.update_block_document(self._block_document_id, update)

    def document_data(self) -> dict:
        """What Block.save stores for this block: its fields as JSON by alias (it has no
        secret and no nested block, the two cases where Prefect's own encoding differs;
        tests/test_registry.py compares the two)."""
        keys = set(type(self).model_fields)
        return self.model_dump(mode="json", by_alias=True, include=keys)
