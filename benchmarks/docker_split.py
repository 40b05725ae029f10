"""The Docker tier before and after a change, side by side in one run (issue 19's split).

    .venv/bin/python benchmarks/docker_split.py --baseline /path/to/old/checkout [--rounds 2]
        [--runs 8]

`--baseline` is a checkout of the earlier commit with its own `.venv` (e.g.
`git worktree add /tmp/base 8c878ac && git -C /tmp/base apply
"$PWD/benchmarks/docker_split-baseline-8c878ac.patch" && cd /tmp/base && python3 -m venv .venv
&& .venv/bin/pip install -e .`; the patch makes 8c878ac's docker_tier.py print the latency,
the task time and the phases as this one does, and changes nothing else). Each round runs
benchmarks/docker_tier.py `--skip-cold` there and here, alternately (each on a fresh stack of
its own), so both see the same machine; the figures each printed are collected and shown side
by side: simulate overhead and latency (median per round), the model's own task time, the
re-publish after a code-only change, the image size, and the light-call latency where the
checkout measures it; each run's phases (testing/run_phases.py) are echoed as they come.
Needs root, like docker_tier.py.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    "simulate overhead (median, s)": r"simulate overhead, docker pool, \d+ runs: median ([\d.]+) s",
    "re-publish after a code-only change (s)": r"re-publish after a code-only change: ([\d.]+) s",
    "simulate latency, submit → notified (median, s)": r"simulate latency \(submit → web app"
    r" notified\): median ([\d.]+) s",
    "the model's own task time (median, s)": r"own task time: median ([\d.]+) s",
    "image (MB)": r"image \S+: (\d+) MB",
    "parse, warm (median, s)": r"then median ([\d.]+) s",
}


def run(checkout: Path, runs: int) -> dict[str, float]:
    """docker_tier.py of `checkout`, with its own interpreter; the figures it printed."""
    done = subprocess.run(
        [str(checkout / ".venv/bin/python"), "benchmarks/docker_tier.py", "--skip-cold"]
        + ["--runs", str(runs)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: docker_tier.py failed\n{done.stdout}\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        if line.strip().startswith("phase "):
            print(f"  {checkout.name}: {line.strip()}")  # where the time went (run_phases)
    found = {}
    for name, pattern in FIGURES.items():
        match = re.search(pattern, done.stdout)
        if match:
            found[name] = float(match.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for round_ in range(args.rounds):
        for label, checkout in (("baseline", args.baseline), ("this", ROOT)):
            figures = run(checkout, args.runs)
            results[label].append(figures)
            print(f"round {round_ + 1} {label}: {figures}", flush=True)
    print(f"\n{'figure':<42} {'baseline':>10} {'this':>10} {'ratio':>7}")
    for name in FIGURES:
        base = [r[name] for r in results["baseline"] if name in r]
        this = [r[name] for r in results["this"] if name in r]
        b = statistics.median(base) if base else None
        t = statistics.median(this) if this else None
        ratio = f"{t / b:.2f}" if b and t else "-"
        show = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(f"{name:<42} {show(b):>10} {show(t):>10} {ratio:>7}")


if __name__ == "__main__":
    main()
