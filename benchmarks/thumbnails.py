"""What one output's thumbnail costs, per media type: headless Chromium in the model sandbox.

    .venv/bin/python benchmarks/thumbnails.py [--runs 5]

Each thumbnail is a fresh Chromium in bubblewrap, as the model's uid, without network, in a
cgroup of its own (runtime/render.py); the simulate flow makes them one after another, after
the result's delivery. bokeh is measured twice: the placeholder, and a real chart drawn by the
BokehJS of a model venv (the installed bokeh's files, in a venv's layout). For each media type
this prints the median wall-clock seconds of a render (Chromium's start included: most of it)
and the highest peak memory its cgroup counted (every Chromium process, its tmpfs and
/dev/shm), plus the size of the PNG. Run as root (the
sandbox's uid switch and cgroups need it); the figures are the machine's, under its load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_cs.runtime.render import PNG_SIGNATURE, thumbnail  # noqa: E402


def sample_png(width: int, height: int) -> bytes:
    """A gradient, so the image is not one colour: a real PNG without an image library."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    rows = b"".join(
        b"\x00" + b"".join(bytes((x % 256, y % 256, 128)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (PNG_SIGNATURE, chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(rows)))
    ) + chunk(b"IEND", b"")


def samples() -> dict[str, bytes]:
    """One typical output per media type the renderer draws."""
    rows = "".join(f"<tr><td>{i}</td><td>{i * i}</td><td>{i / 7:.3f}</td></tr>" for i in range(40))
    return {
        "Markdown": b"# Results\n\n" + b"* a point with **bold** text\n" * 30,
        "Text": b"line of model output, 0123456789\n" * 60,
        "table": f"<table><tr><th>n</th><th>n2</th><th>n/7</th></tr>{rows}</table>".encode(),
        "CSV": b"n,n2\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(100)),
        "PNG": sample_png(800, 600),
        "bokeh": b'{"target_id": null, "root_id": "1", "doc": {"roots": []}}',
    }


def bokeh_chart() -> bytes:
    """A line chart of 200 points as a C/S app returns it (`json_item`), made with the bokeh
    the test extras install."""
    import json

    from bokeh.embed import json_item
    from bokeh.plotting import figure

    chart = figure(width=600, height=380, title="sample bokeh")
    chart.line(list(range(200)), [(i * 37) % 101 for i in range(200)], line_width=2)
    return json.dumps(json_item(chart)).encode()


def bokeh_environment(root: Path) -> Path:
    """A model venv's layout holding the installed bokeh's BokehJS, readable by the model's
    uid (as a process-tier venv is)."""
    import bokeh
    from prefect_cs.runtime.render import BOKEH_FILES

    js = root / "venv/lib/python3.11/site-packages/bokeh/server/static/js"
    js.mkdir(parents=True)
    for name in BOKEH_FILES:
        shutil.copy(Path(bokeh.__file__).parent / "server/static/js" / name, js / name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root / "venv"


def report(media_type: str, rendered: list) -> None:
    seconds = [r.seconds for r in rendered]
    peaks = [r.peak_memory_mib for r in rendered if r.peak_memory_mib is not None]
    peak = f"{max(peaks):9.1f}" if peaks else f"{'n/a':>9}"
    print(
        f"{media_type:<16} {statistics.median(seconds):9.2f} {max(seconds):7.2f} {peak}"
        f" {len(rendered[-1].png):10,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"{'media type':<16} {'median s':>9} {'max s':>7} {'peak MiB':>9} {'PNG bytes':>10}")
    for media_type, data in samples().items():
        name = "bokeh placeholder" if media_type == "bokeh" else media_type
        report(name, [thumbnail(media_type, f"sample {media_type}", data) for _ in range(runs)])
    root = Path(tempfile.mkdtemp(prefix="cs-bench-bokeh-"))
    try:
        environment, chart = bokeh_environment(root), bokeh_chart()
        report(
            "bokeh (BokehJS)",
            [thumbnail("bokeh", "chart", chart, environment) for _ in range(runs)],
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
