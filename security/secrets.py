"""Cluster-level and model-level secrets behind one small interface.

A secret is addressed by a scope (None for the cluster, "OWNER/TITLE" for a
model) and a name. Two backends store them: Prefect `Secret` blocks (the
default, nothing else to run) and Google Secret Manager (production). Jobs get
secrets resolved by `model_secret_env`, and everything leaving the cluster goes
through the `Scrubber` (security/scrubber.py) so a value a model prints never reaches the web app, a
log or an artifact.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect_cs.core.errors import (
    InvalidValue,
    NotConfigured,
    SecretNotFound,
    SecretsError,
    SettingsError,
)
from prefect_cs.core.names import (
    SECRET_NAME_RE,
    SECRET_NAME_RULE,
    WEBHOOK_SECRET,
    check_declared_secret,
    check_name,
    check_secret_name,
    model_code_secrets,
    slug,
)
from prefect_cs.core.settings import SecretsSettings, get_settings

MAX_VALUE_BYTES = 64 * 1024  # Google Secret Manager's payload limit, kept for both backends
MAX_ID_LENGTH = 255  # Google Secret Manager's secret id limit
BACKENDS = ("prefect", "gcp")


# ---- names and scopes -------------------------------------------------------


def check_stored_name(name: str) -> str:
    """The format alone: get/list/delete still reach a secret stored before names were checked
    against the platform's variables (`check_secret_name`, core/names.py, guards `set`)."""
    if not isinstance(name, str) or not SECRET_NAME_RE.fullmatch(name):
        raise InvalidValue(f"invalid secret name {name!r}: use {SECRET_NAME_RULE}, e.g. 'API_KEY'")
    return name


def parse_scope(scope: str | None) -> tuple[str, str] | None:
    """None is the cluster; "OWNER/TITLE" is a model (validated like model names)."""
    if scope is None:
        return None
    owner, _, title = scope.partition("/")
    return check_name("owner", owner), check_name("title", title)


def encode(text: str) -> str:
    """Reversibly map [A-Za-z0-9_-] onto [a-z0-9-] (Prefect block names): '-'→'-0', '_'→'-1',
    'X'→'-x'.

    An encoded string never contains '--' and never ends with '-', so '--' can
    separate the parts of an id without ambiguity.
    """
    out = []
    for ch in text:
        if ch == "-":
            out.append("-0")
        elif ch == "_":
            out.append("-1")
        elif ch.isupper():
            out.append("-" + ch.lower())
        else:
            out.append(ch)
    return "".join(out)


def decode(text: str) -> str:
    """The inverse of `encode`."""
    out, chars = [], iter(text)
    for ch in chars:
        if ch != "-":
            out.append(ch)
            continue
        following = next(chars, "")
        out.append({"0": "-", "1": "_"}.get(following) or following.upper())
    return "".join(out)


def scope_prefix(model: tuple[str, str] | None) -> str:
    """The id prefix shared by every secret of one scope, and by no other scope's."""
    if model is None:
        return "cs-cluster--"
    owner, title = model
    return f"cs-model--{encode(owner)}--{encode(title)}--"


def secret_id(model: tuple[str, str] | None, name: str) -> str:
    """`cs-cluster--<name>` or `cs-model--<owner>--<title>--<name>`, each part encoded."""
    ident = scope_prefix(model) + encode(check_stored_name(name))
    if len(ident) > MAX_ID_LENGTH:
        raise InvalidValue(
            f"secret name {name!r} is too long for this scope: the stored id would have"
            f" {len(ident)} characters (at most {MAX_ID_LENGTH}); use a shorter name"
        )
    return ident


def name_from_id(model: tuple[str, str] | None, ident: str) -> str | None:
    """The original name of an id in this scope, or None when the id is not one of its secrets."""
    prefix = scope_prefix(model)
    if not ident.startswith(prefix):
        return None
    rest = ident[len(prefix) :]
    name = decode(rest)
    if "--" in rest or encode(name) != rest or not SECRET_NAME_RE.fullmatch(name):
        return None
    return name


def check_value(value: str) -> str:
    """Empty values are refused: scrubbing an empty string would be meaningless."""
    if not isinstance(value, str) or not value:
        raise InvalidValue("a secret value must be a non-empty string")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidValue(f"a secret value may have at most {MAX_VALUE_BYTES} bytes")
    return value


# ---- the interface -------------------------------------------------------------


class SecretsBackend(ABC):
    """set / get / list / delete secrets of one scope (the cluster, or one model)."""

    def __init__(self, scope: str | None = None) -> None:
        self.scope = scope
        self.model = parse_scope(scope)

    @property
    def where(self) -> str:
        """The scope in words, for error messages."""
        return "the cluster" if self.model is None else f"model {self.model[0]}/{self.model[1]}"

    def id_for(self, name: str) -> str:
        return secret_id(self.model, name)

    def not_found(self, name: str) -> SecretNotFound:
        return SecretNotFound(f"secret {name!r} is not set for {self.where}")

    @abstractmethod
    def set(self, name: str, value: str) -> None:
        """Create the secret or replace its value."""

    @abstractmethod
    def get(self, name: str) -> str:
        """The value; SecretNotFound when it is not set in this scope."""

    @abstractmethod
    def list(self) -> list[str]:
        """The original names of this scope's secrets, sorted; never another scope's."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the secret; SecretNotFound when it is not set in this scope."""


# ---- backend 1: Prefect Secret blocks -------------------------------------------


class PrefectSecretsBackend(SecretsBackend):
    """Prefect `Secret` block documents named by `secret_id` (they show, masked, in the UI)."""

    page_size = 200

    def set(self, name: str, value: str) -> None:
        from prefect.blocks.system import Secret

        check_secret_name(name)
        secret = Secret(value=check_value(value))
        with _prefect_errors(f"save secret {name!r}"):
            secret.save(self.id_for(name), overwrite=True, _sync=True)

    def get(self, name: str) -> str:
        from prefect.blocks.system import Secret

        try:
            with _prefect_errors(f"read secret {name!r}"):
                block = Secret.load(self.id_for(name), _sync=True)
        except ValueError as exc:
            raise self.not_found(name) from exc
        # Secret.get() would json-decode "123" into an int: read the raw string.
        value = block.value.get_secret_value()
        return value if isinstance(value, str) else json.dumps(value)

    def list(self) -> list[str]:
        names = (name_from_id(self.model, ident) for ident in self._document_names())
        return sorted(n for n in names if n is not None)

    def delete(self, name: str) -> None:
        from prefect.blocks.system import Secret

        try:
            with _prefect_errors(f"delete secret {name!r}"):
                Secret.delete(self.id_for(name), _sync=True)
        except ValueError as exc:
            raise self.not_found(name) from exc

    def _document_names(self) -> list[str]:
        """Every Secret block document name, page by page, without their values."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        names: list[str] = []
        with _prefect_errors("list secrets"), get_client(sync_client=True) as client:
            while True:
                try:
                    page = client.read_block_documents_by_type(
                        "secret", offset=len(names), limit=self.page_size, include_secrets=False
                    )
                except ObjectNotFound:
                    return []
                names += [doc.name for doc in page if doc.name]
                if len(page) < self.page_size:
                    return names


@contextmanager
def _prefect_errors(action: str) -> Iterator[None]:
    """The Prefect API's refusal (a 4xx or 5xx) as a one-line SecretsError naming the status only:
    the response body can echo the request, and a save's request holds the value."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        raise SecretsError(
            f"the Prefect API answered {status} when asked to {action}: check PREFECT_API_URL and"
            " its login (`prefect-cs stack start` writes $CS_HOME/prefect-auth), then retry"
        ) from None


# ---- backend 2: Google Secret Manager ---------------------------------------------


class GcpSecretsBackend(SecretsBackend):
    """Google Secret Manager: one secret per name, id `secret_id`, scope in labels.

    Labels (lowercase only) make the scope filterable; annotations keep the
    original owner, title and name, and `list` checks them against the id.
    """

    def __init__(
        self, scope: str | None = None, *, project: str, client: Any | None = None
    ) -> None:
        super().__init__(scope)
        if not project:
            raise NotConfigured("Google Secret Manager needs a project: set CS_GCP_PROJECT")
        self.project = project
        self._client = client

    @property
    def client(self) -> Any:
        """Created on first use, so choosing the backend needs no credentials yet."""
        if self._client is None:
            self._client = gcp_client(get_secrets_settings())
        return self._client

    @property
    def parent(self) -> str:
        return f"projects/{self.project}"

    def path(self, name: str) -> str:
        return f"{self.parent}/secrets/{self.id_for(name)}"

    def labels(self) -> dict[str, str]:
        if self.model is None:
            return {"cs_scope": "cluster"}
        return {"cs_scope": "model", "cs_model": slug(*self.model)[:63]}

    def annotations(self, name: str) -> dict[str, str]:
        notes = {"cs_name": name}
        if self.model is not None:
            notes |= {"cs_owner": self.model[0], "cs_title": self.model[1]}
        return notes

    def set(self, name: str, value: str) -> None:
        import google_crc32c
        from google.api_core import exceptions

        data = check_value(value).encode()
        check_secret_name(name)
        secret = {
            "replication": {"automatic": {}},
            "labels": self.labels(),
            "annotations": self.annotations(name),
        }
        with _gcp_errors(f"set {name!r} for {self.where}"):
            try:
                self.client.create_secret(
                    request={
                        "parent": self.parent,
                        "secret_id": self.id_for(name),
                        "secret": secret,
                    }
                )
            except exceptions.Conflict:
                pass  # it exists: add a new version below
            payload = {"data": data, "data_crc32c": google_crc32c.value(data)}
            self.client.add_secret_version(request={"parent": self.path(name), "payload": payload})

    def get(self, name: str) -> str:
        import google_crc32c
        from google.api_core import exceptions

        with _gcp_errors(f"get {name!r} for {self.where}"):
            try:
                response = self.client.access_secret_version(
                    request={"name": self.path(name) + "/versions/latest"}
                )
            except exceptions.NotFound as exc:
                raise self.not_found(name) from exc
        data = response.payload.data
        crc = response.payload.data_crc32c
        if crc and google_crc32c.value(data) != crc:
            raise SecretsError(f"secret {name!r} for {self.where}: payload checksum mismatch")
        return data.decode()

    def list(self) -> list[str]:
        query = " AND ".join(f"labels.{k}={v}" for k, v in self.labels().items())
        names = []
        with _gcp_errors(f"list secrets of {self.where}"):
            for secret in self.client.list_secrets(
                request={"parent": self.parent, "filter": query}
            ):
                if name := self._name_of(secret):
                    names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        from google.api_core import exceptions

        with _gcp_errors(f"delete {name!r} for {self.where}"):
            try:
                self.client.delete_secret(request={"name": self.path(name)})
            except exceptions.NotFound as exc:
                raise self.not_found(name) from exc

    def _name_of(self, secret: Any) -> str | None:
        """The original name, only if the annotations and the id agree with this scope."""
        ident = secret.name.rsplit("/", 1)[-1]
        name = name_from_id(self.model, ident)
        notes = dict(secret.annotations)
        if name is None or notes.get("cs_name", name) != name:
            return None
        if self.model is not None and (notes.get("cs_owner"), notes.get("cs_title")) != self.model:
            return None
        return name


@contextmanager
def _gcp_errors(action: str) -> Iterator[None]:
    """Turn Google API and credential errors not handled by the caller into a one-line
    SecretsError (a bare library error would reach the CLI as a traceback)."""
    import requests
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError

    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:  # the REST transport's own
        raise SecretsError(
            f"Google Secret Manager could not {action}: it did not answer"
            f" ({type(exc).__name__}): check CS_GCP_SECRETS_ENDPOINT and the network"
        ) from None
    except (exceptions.GoogleAPIError, GoogleAuthError) as exc:
        raise SecretsError(
            f"Google Secret Manager could not {action}: {type(exc).__name__}: {exc}"
        ) from exc


def gcp_client(settings: SecretsSettings) -> Any:
    """A Secret Manager client: from a GcpCredentials block, the default credentials, or
    anonymous over REST when the endpoint is a plain http:// one (a local emulator)."""
    from google.cloud import secretmanager

    endpoint = settings.gcp_secrets_endpoint
    if endpoint and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return secretmanager.SecretManagerServiceClient(
            credentials=AnonymousCredentials(),
            transport="rest",
            client_options={"api_endpoint": endpoint},
        )
    options = {"api_endpoint": endpoint} if endpoint else None
    credentials = None
    if settings.gcp_credentials_block:
        from prefect_cs.core.blocks import load_named_block
        from prefect_gcp.credentials import GcpCredentials

        fix = "save one under that name, or unset CS_GCP_CREDENTIALS_BLOCK (default credentials)"
        block = load_named_block(
            settings.gcp_credentials_block, "GcpCredentials block", fix, GcpCredentials
        )
        credentials = block.get_credentials_from_service_account()
    return secretmanager.SecretManagerServiceClient(credentials=credentials, client_options=options)


# ---- choosing a backend, resolving a model's secrets, scrubbing ---------------------


def get_secrets_settings() -> SecretsSettings:
    """The `secrets` branch of the settings tree, read afresh (tests change the environment)."""
    return get_settings().secrets


def get_backend(scope: str | None = None) -> SecretsBackend:
    """The backend named by CS_SECRETS_BACKEND (`prefect`, the default, or `gcp`)."""
    settings = get_secrets_settings()
    kind = settings.secrets_backend.strip().lower()
    if kind == "prefect":
        return PrefectSecretsBackend(scope)
    if kind == "gcp":
        return GcpSecretsBackend(scope, project=settings.gcp_project or "")
    raise SettingsError(
        f"invalid CS_SECRETS_BACKEND {settings.secrets_backend!r}: use one of {', '.join(BACKENDS)}"
    )


def model_secret_env(owner: str, title: str, names: Iterable[str]) -> dict[str, str]:
    """A model's declared secrets by name: the model's own value first, else the cluster's.
    The platform's own (a per-repository GITHUB_WEBHOOK_SECRET) are left out: they are for the
    webhook receiver (`model_webhook_secret`), never for jobs or model code."""
    model = get_backend(f"{owner}/{title}")
    cluster = get_backend(None)
    env = {}
    for name in model_code_secrets(map(check_declared_secret, names)):
        try:
            env[name] = model.get(name)
        except SecretNotFound:
            try:
                env[name] = cluster.get(name)
            except SecretNotFound:
                raise SecretNotFound(
                    f"model {owner}/{title} declares secret {name!r}, which is set neither for"
                    f" the model nor for the cluster: run"
                    f" `prefect-cs models -n {owner}/{title} secrets set --name {name}`"
                ) from None
    return env


def model_webhook_secret(owner: str, title: str) -> str | None:
    """The model's own webhook key (model scope only, never the cluster's), or None."""
    try:
        return get_backend(f"{owner}/{title}").get(WEBHOOK_SECRET)
    except SecretNotFound:
        return None
