"""Mutation testing of the security- and delivery-critical code, with cosmic-ray (issue 10).

Why: a suite that stays green whatever the code does proves nothing. Here each small change
cosmic-ray makes to the code (a `<` for a `<=`, a `True` for a `False`, a deleted `break`…)
must make a test fail ("killed"); a change no test notices ("survived") is either a missing
test or an equivalent mutant, and the report says which.

Each target is one file, the functions mutated in it (all of it if none are named) and its
fast unit tests only, so the whole run fits in about 15 minutes on 2 cores. The real-server
tests (tests/test_lost_results.py…) cover the same code end to end, too slowly to run per mutant.

cosmic-ray mutates the files in place and restores each; this script also keeps a copy of
each target and puts it back at the end, whatever happens. Do not run other tests in this
tree while it runs.

    .venv/bin/pip install -e ".[mutation]"
    .venv/bin/python benchmarks/mutation.py                 # every target
    .venv/bin/python benchmarks/mutation.py --only scrubber --keep /tmp/mut
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -p no:randomly"


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    functions: tuple[str, ...]  # qualified names ("Scrubber.scrub"); () = the whole module
    tests: str  # pytest arguments: the fast unit tests of this code

    @property
    def command(self) -> str:
        return f"{PYTEST} {self.tests}"


TARGETS = [
    Target(
        "webhook-signature",
        "services/webhook/signature.py",
        ("signature", "signature_ok"),
        "tests/test_webhook.py -k signature_check",
    ),
    Target(
        "scrubber",
        "security/scrubber.py",
        (
            "Scrubber.__init__",
            "Scrubber.__call__",
            "Scrubber.scrub",
            "Scrubber._scalar",
            "Scrubber._rebuild",
        ),
        "tests/test_payload_safety.py -k scrubber",
    ),
    Target(
        "output-validation",
        "flows/outputs.py",
        (),
        "tests/test_payload_safety.py -k 'not light_answer and not stdout and not grandchild and"
        " not result_over'",
    ),
    Target("payloads-notify", "flows/notify.py", (), "tests/test_notify.py"),
    Target(
        "payloads-jsonsafe",
        "core/jsonsafe.py",
        (),
        "tests/test_payload_safety.py tests/test_notify.py -k 'json_safe or sendable or"
        " safe_member'",
    ),
    Target(
        "lost-run-watcher",
        "services/lost_runs.py",
        (
            "candidates",
            "_read_all",
            "diagnosis",
            "already_notified",
            "stuck_for",
            "reason_for",
            "report",
            "scan_once",
        ),
        "tests/test_watcher_units.py",
    ),
]


def function_lines(source: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line ranges (decorators included) of the named functions and methods; the whole file if
    none."""
    if not names:
        return [(1, len(source.splitlines()))]
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found[name] = (first, child.end_lineno or child.lineno)
                visit(child, f"{name}.")

    visit(ast.parse(source), "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"no function {missing} in the target: update TARGETS in {__file__}")
    return [found[n] for n in names]


def run(argv: list[str], log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed; see {log}")


def baseline(target: Target, log: Path) -> float:
    """Seconds the tests take on the unmutated code; they must pass, or every mutant 'dies'."""
    started = time.monotonic()
    with log.open("a") as out:
        done = subprocess.run(
            target.command, shell=True, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise SystemExit(f"{target.name}: its tests fail without any mutation; see {log}")
    return time.monotonic() - started


def write_config(target: Target, folder: Path, timeout: float) -> Path:
    config = folder / f"{target.name}.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.path}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{target.command.replace(chr(34), chr(92) + chr(34))}"\n\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    return config


# The comparison replacements run: the negation and the boundary shift of each operator
# (`<` → `>=` and `<=`), not every other operator (`<` → `is`, `==` → `>`…).
COMPARISONS = {
    ("Eq", "NotEq"),
    ("NotEq", "Eq"),
    ("Lt", "GtE"),
    ("Lt", "LtE"),
    ("LtE", "Gt"),
    ("LtE", "Lt"),
    ("Gt", "LtE"),
    ("Gt", "GtE"),
    ("GtE", "Lt"),
    ("GtE", "Gt"),
    ("In", "NotIn"),
    ("NotIn", "In"),
    ("Is", "IsNot"),
    ("IsNot", "Is"),
}


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the annotations are. Every target has `from __future__ import annotations`, so an
    annotation is never evaluated: a mutant there (`str | None` → `str & None`) is equivalent."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        hints = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            hints.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            hints.append(node.returns)
        spans += [((h.lineno, h.col_offset), (h.end_lineno, h.end_col_offset)) for h in hints]
    return spans


def selected(items: list, source: str, target: Target) -> list:
    """The mutations to run: inside the target's functions, not in an annotation, COMPARISONS
    only, and one replacement per binary operator (`+` → `-`, not also `*`, `/`, `%`, `**`, `<<`…: a
    test that notices one notices the others; this keeps the run within ~15 minutes)."""
    ranges = function_lines(source, target.functions)
    hints = annotation_spans(source)
    chosen, sites = [], set()
    for item in sorted(items, key=lambda i: i.job_id):
        (m,) = item.mutations
        if not any(a <= m.start_pos[0] <= b for a, b in ranges):
            continue
        if any(start <= tuple(m.start_pos) < end for start, end in hints):
            continue
        if m.operator_name.startswith("core/ReplaceComparisonOperator_"):
            if tuple(m.operator_name.split("_")[1:]) not in COMPARISONS:
                continue
        if m.operator_name.startswith("core/ReplaceBinaryOperator_"):
            site = (tuple(m.start_pos), m.operator_name.split("_")[1])  # the operator replaced
            if site in sites:
                continue
            sites.add(site)
        chosen.append(item)
    return chosen


def skip_unselected(session: Path, target: Target) -> int:
    """Mark every mutation `selected` leaves out as skipped; return how many remain."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    source = (ROOT / target.path).read_text()
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        keep = {item.job_id for item in selected(items, source, target)}
        left_out = [item.job_id for item in items if item.job_id not in keep]
        if left_out:
            skipped = WorkResult(output="not selected", worker_outcome=WorkerOutcome.SKIPPED)
            db.set_multiple_results(left_out, skipped)
        return len(keep)


@dataclass
class Outcome:
    target: Target
    killed: int
    survived: list[str]  # one line per surviving mutant: where, operator, what changed
    seconds: float


def outcome(session: Path, target: Target, seconds: float) -> Outcome:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survived = 0, []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                survived.append(describe(item, result.diff or ""))
            else:
                killed += 1
    return Outcome(target, killed, sorted(survived), seconds)


def describe(item, diff: str) -> str:
    mutation = item.mutations[0]
    changed = [
        line for line in diff.splitlines() if line[:1] in "-+" and line[:3] not in ("---", "+++")
    ]
    where = f"{mutation.module_path}:{mutation.start_pos[0]}"
    return f"{where} {mutation.operator_name.removeprefix('core/')}: " + " => ".join(
        line[1:].strip() for line in changed
    )


def mutate(target: Target, folder: Path, timeout_factor: float) -> Outcome:
    log = folder / f"{target.name}.log"
    started = time.monotonic()
    timeout = max(30.0, baseline(target, log) * timeout_factor)
    config, session = write_config(target, folder, timeout), folder / f"{target.name}.sqlite"
    session.unlink(missing_ok=True)
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    run([*cosmic, "init", str(config), str(session)], log)
    remaining = skip_unselected(session, target)
    print(f"{target.name}: {remaining} mutants (timeout {timeout:.0f}s each)", flush=True)
    run([*cosmic, "exec", str(config), str(session)], log)
    return outcome(session, target, time.monotonic() - started)


def report(outcomes: list[Outcome]) -> None:
    print(f"\n{'target':<20} {'file':<24} {'mutants':>7} {'killed':>7} {'survived':>8} {'time':>7}")
    for o in outcomes:
        total = o.killed + len(o.survived)
        print(
            f"{o.target.name:<20} {o.target.path:<24} {total:>7} {o.killed:>7}"
            f" {len(o.survived):>8} {o.seconds:>6.0f}s"
        )
    for o in outcomes:
        if o.survived:
            print(f"\nsurvivors, {o.target.name}:")
            for line in o.survived:
                print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="target names", choices=[t.name for t in TARGETS])
    parser.add_argument(
        "--keep", type=Path, help="folder for configs, sessions and logs (default: a temporary one)"
    )
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=4.0,
        help="a mutant's time limit, times the baseline",
    )
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or t.name in args.only]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cs-mutation-"))
    folder.mkdir(parents=True, exist_ok=True)
    copies = {t.path: (ROOT / t.path).read_bytes() for t in targets}
    outcomes = []
    try:
        for target in targets:
            outcomes.append(mutate(target, folder, args.timeout_factor))
    finally:
        for path, original in copies.items():  # whatever happened, the tree is as it was
            (ROOT / path).write_bytes(original)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report(outcomes)


if __name__ == "__main__":
    main()
