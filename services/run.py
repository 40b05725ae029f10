"""`python -m prefect_cs.services.run watch|api …`: the stack's platform processes, by module name.

Why not `python -m prefect_cs.cli.main watch`: the stack is in services/, below the
CLI (tests/test_layout.py checks modules started by name as it checks imports), so
it starts the lost-run watcher and the cluster API through this module, which calls
what `prefect-cs watch` and `prefect-cs api serve` call. An expected error (a
setting, a secret, an unreachable server) leaves as one `error: …` line in the
process's log, as it would from the CLI.
"""

from __future__ import annotations

import argparse
import sys

import httpx
from prefect_cs.core.errors import CSError

EXPECTED = (CSError, LookupError, ValueError, httpx.TransportError)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prefect_cs.services.run")
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("watch", help="the lost-run watcher (`prefect-cs watch`)")
    watch.add_argument("--interval", type=float, default=30.0)
    api = commands.add_parser("api", help="the cluster API (`prefect-cs api serve`)")
    api.add_argument("--host", required=True)
    api.add_argument("--port", type=int, required=True)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "watch":
        from prefect_cs.services.lost_runs import watch

        watch(interval=args.interval)
    else:
        from prefect_cs.services.api import serve

        serve(args.host, args.port)  # auth: CS_API_AUTH, inherited from the stack's environment


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        run(args)
    except EXPECTED as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
