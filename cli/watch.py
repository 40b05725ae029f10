"""`prefect-cs watch`: the lost-run watcher, one entry for every tier.

A simulate run whose flow never ran (a crashed pod or process, a container
that never started, no worker) cannot report itself; the watcher in
services/lost_runs.py sends its FAIL. It is tier-agnostic, so it is a root
command (formerly also `k8s watch`); the k8s manifests and the local stack run it.
"""

from __future__ import annotations

import json

import typer


def watch_cmd(
    pending_timeout: float = typer.Option(
        600.0,
        help="Seconds a run may stay Pending, or overdue on a pool no worker polls",
    ),
    interval: float = typer.Option(30.0, help="Seconds between scans"),
    once: bool = typer.Option(False, help="One scan, print what was reported, exit"),
) -> None:
    """Send a FAIL to the web app for simulate runs lost before their flow could report.

    Crashed, or never started (Pending, or overdue while no worker polls its pool; a run
    waiting its turn on a polled pool is queued, not lost): on Kubernetes, and the same on
    the process and Docker tiers (a killed flow process, a container that never ran).
    """
    from prefect_cs.services.lost_runs import scan_once, watch

    if once:
        typer.echo(json.dumps(scan_once(pending_timeout), indent=2))
        return
    watch(pending_timeout, interval)
