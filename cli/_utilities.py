"""What every `prefect-cs` command shares: the consoles, the exits, the error mapping.

Operators read one line that names the fix, so every error an operator can act
on leaves through `exit_with_error`, and every command runs inside
`with_cli_exception_handling` (added by `CSTyper.command`, as PrefectTyper did
in Prefect's typer-era CLI). Only three kinds of error are the operator's: the
platform's own `CSError`s (raised where the platform refuses something, with
the fix in the message), pydantic's ValidationError (a config or block that
does not validate) and httpx.TransportError (a server that did not answer).
They become `error: …` on stderr and exit code 1.

Everything else is a bug and keeps its traceback (without local variables,
which can hold tokens): a bare KeyError or ValueError from the platform's code
printed as `error: 'x'` would hide where it came from. Code that refuses an
operator's input raises a CSError (core/errors.py), never a bare built-in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx
import typer
from prefect_cs.core.errors import CSError
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False, soft_wrap=True)
"""Everything a command reports on stdout (tables, JSON, progress lines); lines never wrap, so
paths stay whole."""

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
"""Errors only: stderr, never wrapped, so one error is one line a script can grep."""

EXPECTED: tuple[type[Exception], ...] = (CSError, ValidationError, httpx.TransportError)
"""Errors an operator can fix from the message: one line, exit 1. Not LookupError or
ValueError: the platform raises its own subclasses of those (NotFound, ConfigError, …),
so a bare one is a bug and must show where it was raised."""

_CLICK_EXITS = (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


def exit_with_error(message: str | BaseException, code: int = 1) -> NoReturn:
    """Print `error: <message>` on stderr and exit with `code` (1 unless usage is wrong)."""
    text = describe(message) if isinstance(message, BaseException) else message
    err_console.print(Text.assemble(("error:", "red"), " ", text))
    raise typer.Exit(code)


def exit_with_success(message: str) -> NoReturn:
    """Print the closing line (rich markup allowed) on stdout and exit 0."""
    console.print(message)
    raise typer.Exit(0)


def describe(exc: BaseException) -> str:
    """One error as the operator should read it.

    Messages of expected errors are shown whole (they name the fix); pydantic
    errors are reduced to field and message; anything else (an unreachable
    backend, a refused connection) to its type and first line.
    """
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    if isinstance(exc, httpx.TransportError):
        return unreachable(exc)
    text = str(exc).strip()
    if isinstance(exc, EXPECTED) and text:
        return text
    first = text.splitlines()[0] if text else "(no message)"
    return f"{type(exc).__name__}: {first}"


def unreachable(exc: httpx.TransportError) -> str:
    """A server that did not answer; for the Prefect API, how to start or point at it."""
    from prefect.settings import PREFECT_API_URL

    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request attached
        url = "the server"
    first = (str(exc).strip().splitlines() or ["no answer"])[0]
    api = PREFECT_API_URL.value() or ""
    if api and url.startswith(api):
        return (
            f"cannot reach the Prefect API at {api} ({type(exc).__name__}: {first}):"
            " start it with `prefect-cs stack start`, or set PREFECT_API_URL to the platform's"
            " server"
        )
    return f"cannot reach {url} ({type(exc).__name__}: {first})"


@contextmanager
def exit_on_error(
    context: str = "", catch: type[Exception] | tuple[type[Exception], ...] = EXPECTED
) -> Iterator[None]:
    """Turn `catch` into one error line, prefixed with `context` (what was being done)."""
    try:
        yield
    except _CLICK_EXITS:  # typer.Exit and Abort are RuntimeErrors: never swallow them
        raise
    except catch as exc:
        exit_with_error(f"{context}{describe(exc)}")


def with_cli_exception_handling(fn: F) -> F:
    """Run a command so that expected errors exit 1 with one line (see `EXPECTED`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exit_on_error():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class CSTyper(typer.Typer):
    """A typer app whose commands all run under `with_cli_exception_handling`.

    Groups default to showing their help when called bare, and tracebacks never
    print local variables (they can hold tokens and secret values).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(name, **kwargs)

        def decorator(fn: F) -> F:
            register(with_cli_exception_handling(fn))
            return fn

        return decorator


def split_model(name: str) -> tuple[str, str]:
    """OWNER/TITLE → (owner, title), refusing names that cannot be used in paths or images."""
    from prefect_cs.core.names import check_name

    owner, _, title = name.partition("/")
    try:
        return check_name("owner", owner), check_name("title", title)
    except ValueError as exc:
        exit_with_error(f"{exc} (models are named OWNER/TITLE)")


def read_json(value: str | None) -> dict[str, Any]:
    """A JSON object given inline or as a path to a file; {} when not given."""
    if not value:
        return {}
    text = json_text(value)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        exit_with_error(
            f"not valid JSON ({exc}): give an object inline or the path of a .json file"
        )
    if not isinstance(data, dict):
        exit_with_error("expected a JSON object")
    return data


def json_text(value: str) -> str:
    """The value itself when it is inline JSON, else the text of the file it names. Inline JSON
    is never tried as a path: one longer than a file name may be makes the check itself fail
    (OSError 'File name too long'), and an adjustment easily is."""
    if value.lstrip().startswith(("{", "[")):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        exit_with_error(
            f"{value[:80]!r} is neither inline JSON nor a readable file ({exc.strerror}):"
            " give an object inline or the path of a .json file"
        )
