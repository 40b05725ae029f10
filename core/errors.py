"""The platform's exceptions, under one base so the CLI and services map them in one place.

Every message names the problem and the fix (the command or setting to change).
Each class also derives from the built-in it replaced (LookupError, ValueError,
RuntimeError), so `except LookupError` around a model lookup keeps working.
"""


class CSError(Exception):
    """Anything the platform refuses or cannot do; the message says what to do about it."""


class NotConfigured(CSError, LookupError):
    """A block or setting the call needs is missing (web app, outputs storage, Redis, a secret)."""


class NotFound(CSError, LookupError):
    """A model, tag or stored item that does not exist."""


class InvalidValue(CSError, ValueError):
    """A name or value given to the platform that it refuses (an owner, title, tag, secret name,
    repo URL, task id, tier or pool type); the message gives the rule and an example."""


class ConfigError(CSError, ValueError):
    """A model config (file, block or web app project) that cannot be used, with what to fix."""


class SettingsError(CSError, ValueError):
    """A CS_* environment variable with a value the settings tree refuses; names the variable."""


class TooDeep(CSError, ValueError):
    """JSON from outside (a request body, an adjustment) nested deeper than CS_LIMITS_JSON_DEPTH."""


class OlderTag(CSError, ValueError):
    """A forward-only promote (every webhook publish) refused a tag older than the promoted one;
    the message names both and the rollback command."""


class StepFailed(CSError, RuntimeError):
    """A publish step failed; the message carries the step's own output."""


class MalformedOutputs(CSError, ValueError):
    """run_model returned something cs-storage would not accept; the message names the output."""


class OutputsNotStored(CSError, RuntimeError):
    """The outputs storage (a folder or a GCS bucket) refused or did not answer; names the fix."""


class DeliveryError(CSError, RuntimeError):
    """The web app did not accept a result after the bounded retries."""


class SecretsError(CSError, RuntimeError):
    """The secrets backend refused or failed; the message names the fix."""


class SecretNotFound(CSError, LookupError):
    """No secret of that name in the scope asked for."""


class AclError(CSError, RuntimeError):
    """Redis ACL setup could not connect or was refused; the message names the fix."""


PLATFORM_ERROR = "platform error, not your model"  # how a FAIL that is the platform's begins


TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_TEXT = ("database is locked", "connection reset", "server disconnected")


def is_transient(exc: BaseException) -> bool:
    """A platform hiccup worth retrying (an API's 5xx or 429, a dropped connection, SQLite's
    lock), as opposed to an error that would repeat (a bad config, a model's exception)."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in TRANSIENT_STATUS
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisDown
        from redis.exceptions import TimeoutError as RedisSlow
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    if isinstance(exc, (RedisDown, RedisSlow)):
        return True
    return any(text in str(exc).lower() for text in TRANSIENT_TEXT)
