"""Names the platform derives from a model's owner and title (and tags): one place, one rule.

Owner, title and tag end up in paths, block and deployment names, image
references and Kubernetes labels; each of those has its own alphabet, so each
derivation lives here, next to the check that makes it safe.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable

from prefect_cs.core.errors import InvalidValue

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_RULE = "letters, digits, '-' and '_' only (1 to 64 characters)"


def check_name(kind: str, value: str) -> str:
    """Refuse owner/title values that cannot be used in paths, image names and URLs."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidValue(
            f"invalid {kind} {value!r}: use {NAME_RULE}, e.g. 'PSLmodels' or 'Tax-Brain'"
        )
    return value


def slug(owner: str, title: str) -> str:
    """Block and deployment names allow only lowercase letters, digits and dashes."""
    return f"{owner}-{title}".lower().replace("_", "-")


HASHED_RE = re.compile(r"--h[0-9a-f]{8}$")  # the suffix `hashed` adds; never kept as given


def hashed(text: str, cleaned: str, limit: int) -> str:
    """`cleaned` (cut to fit) plus a short hash of `text`: distinct texts stay distinct."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: limit - 11]}--h{digest}"


def kept_as_given(text: str, cleaned: str, limit: int) -> bool:
    """A name passes through unchanged only if cleaning left it alone and it cannot be
    mistaken for a hashed one: that is what makes every mapping below injective."""
    return cleaned == text and len(text) <= limit and not HASHED_RE.search(text)


def image_component(text: str) -> str:
    """An owner or title as a registry path component ([a-z0-9] with dashes inside), injective
    on what the registry treats as one model (lowercase, '_' as '-': see `slug`)."""
    normal = text.lower().replace("_", "-")
    cleaned = re.sub(r"[^a-z0-9-]+", "-", normal).strip("-")
    if kept_as_given(normal, cleaned, 64):
        return normal
    return hashed(normal, cleaned or "x", 64 + 11)


def image_name(owner: str, title: str) -> str:
    """`<owner>_<title>` as one registry path component: components hold no '_', so the '_'
    between them keeps two models from ever sharing an image repository."""
    return f"{image_component(owner)}_{image_component(title)}"


def image_tag(tag: str) -> str:
    """A Docker tag ([A-Za-z0-9_.-], at most 128, not starting with '.' or '-'), injective:
    `rel/1` and `rel-1` get different tags."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-") or "untagged"
    return tag if kept_as_given(tag, cleaned, 128) else hashed(tag, cleaned, 128)


def path_component(text: str) -> str:
    """One safe file or folder name for a tag (or any text): never a separator, never
    `.`/`..` or hidden, at most 100 characters, distinct texts giving distinct names."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-") or "x"
    return text if kept_as_given(text, cleaned, 100) else hashed(text, cleaned, 100)


SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESERVED_PREFIXES = (
    "PREFECT_",
    "CS_",
    "LD_",
    "PYTHON",
    "PIP_",
    "UV_",
    "CONDA",
    "LC_",
    "DOCKER_",
    "KUBERNETES_",
    "GIT_",
    "SSH_",
    "XDG_",
    "DYLD_",
    "MALLOC_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "GCONV_",
)
RESERVED_NAMES = frozenset(
    "PATH HOME USER LOGNAME SHELL PWD OLDPWD TMPDIR TEMP TMP LANG LANGUAGE TZ TERM IFS ENV"
    " BASH_ENV HOSTNAME MAIL VIRTUAL_ENV SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE"
    " CURL_CA_BUNDLE HTTP_PROXY HTTPS_PROXY NO_PROXY ALL_PROXY FTP_PROXY MPLBACKEND"
    " PERL5LIB PERLLIB RUBYLIB NODE_OPTIONS NODE_PATH JAVA_TOOL_OPTIONS".split()
)
WEBHOOK_SECRET = "GITHUB_WEBHOOK_SECRET"  # per repository: a model's own webhook key
# secrets the platform reads itself (the webhook key, the cluster API token), never model code
PLATFORM_SECRETS = frozenset({WEBHOOK_SECRET, "CLUSTER_API_TOKEN"})
SECRET_NAME_RULE = "letters, digits, '_' and '-' only (1 to 64 characters)"
RESERVED_RULE = (
    "secret names may not be platform variables: PREFECT_*, CS_*, LD_*, PYTHON*, PIP_*, UV_*,"
    " LC_*, PATH, HOME, the proxy and CA bundle variables and the like"
)


def check_secret_name(name: str) -> str:
    """Names become environment variable names in jobs and ids in the backends: a name the
    platform or the interpreter reads itself (PREFECT_API_URL, CS_HOME, LD_PRELOAD, …) would
    hand the model the flow's settings or let a value steer the process it runs in."""
    if not isinstance(name, str) or not SECRET_NAME_RE.fullmatch(name):
        raise InvalidValue(f"invalid secret name {name!r}: use {SECRET_NAME_RULE}, e.g. 'API_KEY'")
    upper = name.upper()
    if upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES):
        raise InvalidValue(
            f"invalid secret name {name!r}: {RESERVED_RULE}; choose a name of your own,"
            " e.g. 'API_KEY'"
        )
    return name


SECRET_ENV_PREFIX = "CS_SECRET_"


def secret_env_name(name: str) -> str:
    """The variable a container job carries a declared secret in (a Docker block reference, a
    Kubernetes secretKeyRef): platform-prefixed, so no other variable of a job can be read as
    a secret, and the flow hands the model only `name` itself."""
    return SECRET_ENV_PREFIX + check_secret_name(name)


def check_declared_secret(name: str) -> str:
    """What a model config may declare: a valid secret name. Of the platform's own secrets only
    `GITHUB_WEBHOOK_SECRET`, spelled exactly so: the key its repository's webhook deliveries are
    signed with, read by the receiver and never handed to model code (`model_code_secrets`)."""
    if check_secret_name(name).upper() in PLATFORM_SECRETS and name != WEBHOOK_SECRET:
        raise InvalidValue(
            f"secret name {name!r} is the platform's own and cannot be given to a model: declare"
            f" {WEBHOOK_SECRET!r} (exactly) for a per-repository webhook key, or another name,"
            " e.g. 'MODEL_GITHUB_TOKEN'"
        )
    return name


def model_code_secrets(names: Iterable[str]) -> list[str]:
    """The declared secrets model code receives: all but the platform's own (the webhook key a
    model may declare is for the receiver only, so a model never learns what signs its pushes)."""
    return [name for name in names if name.upper() not in PLATFORM_SECRETS]


TAG_RULE = (
    "git's ref-format rules (`git check-ref-format`) within letters, digits, '.', '_', '-' and"
    " '/': 1 to 128 characters, each '/'-separated part starting with a letter, digit or '_',"
    " no '..', no part ending with '.' or '.lock'"
)
TAG_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_tag(tag: str) -> str:
    """Refuse a git tag git itself would refuse, or one outside the strict character set
    (a tag reaches git's argv, image tags, labels and paths)."""
    parts = tag.split("/") if isinstance(tag, str) else [""]
    bad = (
        not isinstance(tag, str)
        or not 1 <= len(tag) <= 128
        or ".." in tag
        or tag.endswith(".")
        or any(not TAG_PART_RE.fullmatch(p) or p.endswith(".lock") for p in parts)
    )
    if bad:
        raise InvalidValue(f"invalid tag {tag!r}: use {TAG_RULE}, e.g. 'v1.2' or 'release/1.0'")
    return tag


REPO_URL_RULE = "a git URL or a local path that does not start with '-'"


def check_repo_url(url: str) -> str:
    """A repo_url starting with '-' would be read by git as an option; control characters
    have no place in a URL or path."""
    if not isinstance(url, str) or not url.strip() or url.startswith("-"):
        raise InvalidValue(f"invalid repo_url {url!r}: use {REPO_URL_RULE}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidValue(f"invalid repo_url {url!r}: control characters are not allowed")
    return url


def check_task_id(task_id: object) -> str:
    """A task id is a UUID in its canonical form (the web app's); anything else is refused
    before it names a file, a Redis key or a label."""
    text = str(task_id)
    try:
        canonical = str(uuid.UUID(text)) == text.lower()
    except ValueError:
        canonical = False
    if not isinstance(task_id, str) or not canonical:
        raise InvalidValue(
            f"invalid task_id {text[:80]!r}: use a UUID such as"
            f" '{uuid.UUID(int=0)}' (the web app's task id)"
        )
    return task_id


LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(value: str) -> str:
    """A valid Kubernetes label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends."""
    cleaned = LABEL_INVALID.sub("-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
