"""Thumbnails of a simulation's renderable outputs: one PNG each, made by headless Chromium.

Compute Studio's outputs page shows `<output id>.png` beside each renderable output (what
cs-storage's screenshot step wrote). Everything in an output is model code's: hostile input.
So the page Chromium loads is built here, and Chromium runs like model code:

- the page: a strict Content-Security-Policy meta first (nothing fetched at all, no script,
  images only from data: URLs); text and Markdown HTML-escaped; a model's HTML table shown in
  an `<iframe sandbox srcdoc>` (no script, no navigation, and the policy inherited);
- Chromium: in the model sandbox (sandbox.py: bubblewrap, the model's uid, a network namespace
  with only its own loopback, a read-only system) and its confinement (confinement.py: a cgroup
  bounding memory and processes, a private tmpfs work folder), killed after
  CS_LIMITS_THUMBNAIL_SECONDS. Its own sandbox is off (`--no-sandbox`): it cannot make
  namespaces inside bubblewrap's, and bubblewrap is the boundary;
- what comes back is treated as the model's too: read without following links, size-capped,
  and kept only if it is a PNG of the size asked for.

PNG and JPEG outputs are shown through the same page (an `<img>` of a data: URL) after their
header's width x height is checked against CS_LIMITS_THUMBNAIL_PIXELS: no image library in
the platform's process decodes a model's image (Pillow is not a dependency, and decoding
hostile images is the sandbox's job). bokeh outputs (`json_item`s) are drawn by BokehJS from
the model's own environment, whose bokeh made them (so the versions match): the sandbox binds
that venv read-only, as for the model's calls, and the page loads its scripts from there. That
page runs script, the model's (BokehJS is a file of its venv; a chart may carry CustomJS), so
its policy allows script but still nothing fetched, and the sandbox holds without it. Where
the model's environment is not on this machine (an image) or has no bokeh, a bokeh output gets
a placeholder (title + "interactive chart"). Other media types (CSV is shown as a table; MP3,
MP4, HDF5, PDF) are not.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.confinement import Bounds, Confinement
from prefect_cs.runtime.sandbox import Sandbox, model_sandbox
from prefect_cs.runtime.usage import reap, stop

WIDTH, HEIGHT = 640, 480
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHOT_BYTES = 8 * 1024 * 1024  # a 640x480 RGBA PNG is at most ~1.2 MiB
TABLE_ROWS = 60  # a CSV's first rows: more do not fit a thumbnail anyway
PIDS = 512  # Chromium's processes and threads (cgroup pids count threads)
DISK_MIB = 512
POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src 'none';"
    " script-src 'none'; connect-src 'none'; frame-src 'none'; child-src 'none';"
    " form-action 'none'; base-uri 'none'"
)
STYLE = (
    "html,body{margin:0;padding:0;background:#fff;overflow:hidden;font:14px sans-serif}"
    "h1{font-size:16px;margin:8px 10px;color:#333}"
    ".body{margin:0 10px}pre{white-space:pre-wrap;margin:0 10px;font:12px monospace}"
    "iframe{border:0;width:100%;height:440px}"
    "img{display:block;width:100vw;height:100vh;object-fit:contain}"
    "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px}"
    ".placeholder{display:flex;flex-direction:column;align-items:center;justify-content:center;"
    "height:100vh;background:#f4f6f8;color:#456}.placeholder h1{font-size:22px}"
)
TABLE_STYLE = (
    "body{margin:0 10px;font:12px sans-serif}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 4px}"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # bubblewrap is the sandbox: Chromium cannot make namespaces inside it
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # not --blink-settings=scriptEnabled=false: headless Chromium then writes no screenshot;
    # the page has no script anyway (its policy: script-src none; the table frame: sandbox)
    f"--window-size={WIDTH},{HEIGHT}",
)
# Only for a page that runs script (bokeh): BokehJS draws before the shot. Not for the others: a
# page that keeps fetching (nothing it fetches ever answers in the sandbox, but a stalled load
# holds virtual time) could make Chromium wait out its whole time limit.
SCRIPT_FLAGS = ("--virtual-time-budget=5000",)
RENDERED = ("table", "Markdown", "Text", "CSV", "PNG", "JPEG", "bokeh")


class NotRenderable(ValueError):
    """This output gets no thumbnail by design (its media type, its size)."""


class RenderFailed(RuntimeError):
    """Chromium did not make a thumbnail (time limit, memory, a crash, a missing binary)."""


@dataclass(frozen=True)
class Rendered:
    """A thumbnail and what making it cost (peak memory from the render's cgroup, if any)."""

    png: bytes
    seconds: float
    peak_memory_mib: float | None = None


def thumbnail(
    media_type: str, title: str, data: bytes, environment: Path | None = None
) -> Rendered:
    """One output's thumbnail: NotRenderable or RenderFailed say why there is none.
    environment: the model's own (a venv the sandbox binds read-only, as for its calls), whose
    BokehJS draws its bokeh outputs; without one, or without bokeh in it, a placeholder."""
    scripts = bokeh_scripts(environment) if media_type == "bokeh" and environment else []
    if scripts:
        assert environment is not None
        document = bokeh_page(title, data, scripts)
        return screenshot(document, readable=[environment], flags=SCRIPT_FLAGS)
    return screenshot(page(media_type, title, data))


# ---- the page ------------------------------------------------------------------------


def page(media_type: str, title: str, data: bytes) -> str:
    """The whole HTML document Chromium loads for one output: policy first, then the output."""
    body = _body(media_type, str(title or ""), data)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _body(media_type: str, title: str, data: bytes) -> str:
    heading = f"<h1>{html.escape(title)}</h1>" if title else ""
    if media_type == "table":
        srcdoc = html.escape(f"<style>{TABLE_STYLE}</style>{_text(data)}", quote=True)
        return f'{heading}<iframe sandbox="" srcdoc="{srcdoc}"></iframe>'
    if media_type == "Markdown":
        return f"{heading}<div class='body'>{markdown_html(_text(data))}</div>"
    if media_type == "Text":
        return f"{heading}<pre>{html.escape(_text(data))}</pre>"
    if media_type == "CSV":
        return f"{heading}<div class='body'>{csv_table(_text(data))}</div>"
    if media_type in ("PNG", "JPEG"):
        return image_tag(media_type, data)
    if media_type == "bokeh":
        return (
            f"<div class='placeholder'><h1>{html.escape(title or 'Chart')}</h1>"
            "<p>interactive chart: open the output to explore it</p></div>"
        )
    raise NotRenderable(f"{media_type} outputs get no thumbnail (rendered: {', '.join(RENDERED)})")


BOKEH_FILES = ("bokeh.min.js", "bokeh-gl.min.js", "bokeh-widgets.min.js", "bokeh-tables.min.js")
BOKEH_POLICY = (  # BokehJS from the model's environment, drawing into a canvas; nothing fetched
    "default-src 'none'; script-src file: 'unsafe-inline' 'unsafe-eval'; img-src data: blob:;"
    " style-src 'unsafe-inline'; font-src 'none'; connect-src 'none'; frame-src 'none';"
    " child-src 'none'; form-action 'none'; base-uri 'none'"
)


def bokeh_scripts(environment: Path) -> list[Path]:
    """BokehJS as the model's own bokeh package ships it (its version matches the output's),
    main bundle first; none if the environment has no bokeh. Only paths: Chromium reads the
    files inside the sandbox, which sees the environment as the model's calls do."""
    found = sorted(environment.glob("lib/python3*/site-packages/bokeh/server/static/js"))
    if not found or not (found[0] / BOKEH_FILES[0]).is_file():
        return []
    return [found[0] / name for name in BOKEH_FILES if (found[0] / name).is_file()]


def bokeh_page(title: str, data: bytes, scripts: list[Path]) -> str:
    """A bokeh output (C/S's: `bokeh.embed.json_item`) drawn by BokehJS. The chart is the
    model's code (a CustomJS callback is script), so this page runs script, in the sandbox
    like the model's calls: no network, the model's uid, its environment read-only."""
    try:
        item = json.loads(data)
    except ValueError as exc:
        raise NotRenderable(f"the bokeh output is not JSON ({exc})") from exc
    if not isinstance(item, dict) or not isinstance(item.get("doc"), dict):
        raise NotRenderable("the bokeh output is not a `bokeh.embed.json_item` (no `doc`)")
    embedded = json.dumps(item).replace("<", "\\u003c")  # no `</script>` ends the data early
    tags = "".join(f'<script src="{path.as_uri()}"></script>' for path in scripts)
    heading = f"<h1>{html.escape(title)}</h1>" if title else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{BOKEH_POLICY}">'
        f"<style>{STYLE}</style>{tags}</head><body>{heading}<div id='chart'></div>"
        f"<script type='application/json' id='item'>{embedded}</script>"
        "<script>Bokeh.embed.embed_item(JSON.parse("
        "document.getElementById('item').textContent), 'chart')</script></body></html>"
    )


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def markdown_html(text: str) -> str:
    """CommonMark with raw HTML off: a model's `<script>` or `<img>` in Markdown stays text."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(text)


def csv_table(text: str) -> str:
    """The CSV's first rows as an HTML table, every cell escaped."""
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(text))):
        if number >= TABLE_ROWS:
            break
        cells = "".join(f"<td>{html.escape(cell[:200])}</td>" for cell in row[:30])
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{''.join(rows)}</table>"


def image_tag(media_type: str, data: bytes) -> str:
    """The image as a data: URL, after its header says it is what it claims and not a bomb."""
    width, height = image_size(media_type, data)
    cap = get_settings().limits.thumbnail_pixels
    if width * height > cap:
        raise NotRenderable(
            f"the {media_type} is {width:,} x {height:,} pixels, over the thumbnail cap of"
            f" {cap:,} (CS_LIMITS_THUMBNAIL_PIXELS): return a smaller image, or raise the cap"
        )
    mime = "image/png" if media_type == "PNG" else "image/jpeg"
    return f'<img alt="" src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">'


def image_size(media_type: str, data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's SOF marker; NotRenderable if neither."""
    size = png_size(data) if media_type == "PNG" else jpeg_size(data)
    if size is None or min(size) <= 0:
        raise NotRenderable(f"the output is not a readable {media_type} (its header is not)")
    return size


def png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG's marker segments to its first frame header (SOF0-SOF15 but DHT/JPG/DAC)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            at += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


# ---- Chromium, confined ----------------------------------------------------------------


def screenshot(
    document: str,
    sandbox: Sandbox | None = None,
    readable: Sequence[Path] = (),
    flags: Sequence[str] = (),
) -> Rendered:
    """Load `document` in headless Chromium, confined like model code, and return its PNG;
    `readable`: folders the sandbox binds read-only (the model's environment, for BokehJS)."""
    sandbox = sandbox or model_sandbox()
    if sandbox.mode != "bwrap":
        raise RenderFailed(
            f"thumbnails are made only in the bubblewrap sandbox (CS_SANDBOX=bwrap, the process"
            f" tier), not with CS_SANDBOX={sandbox.mode}: Chromium would have the job's network"
        )
    binary = get_settings().chromium
    if not os.access(binary, os.X_OK):
        raise RenderFailed(
            f"no Chromium at {binary}: install Debian's (`apt-get install chromium`) or set"
            " CS_CHROMIUM to its path"
        )
    limits = get_settings().limits
    bounds = Bounds(memory_mib=limits.thumbnail_memory_mib, pids=PIDS, disk_mib=DISK_MIB)
    with Confinement(sandbox, "thumbnail", bounds, network=False) as box:
        (box.work / "page.html").write_text(document, encoding="utf-8")
        sandbox.prepare(box.work)
        started = time.perf_counter()
        code, log = _run(box, limits.thumbnail_seconds, readable, flags)
        seconds = time.perf_counter() - started
        usage = box.usage()
        hit = box.limit_hit(usage)
        if hit:
            raise RenderFailed(f"Chromium ran out of a bound: {hit.split(':')[0]}")
        if code != 0:
            raise RenderFailed(
                f"Chromium exited with {code}: {log or 'no message'} (try `{binary} --headless"
                " --no-sandbox --screenshot about:blank` as the model's uid to see why)"
            )
        png = read_shot(box.work / "shot.png")
    return Rendered(png, round(seconds, 3), usage.peak_memory_mib if usage else None)


def chromium_argv(work: Path, flags: Sequence[str] = ()) -> list[str]:
    binary = get_settings().chromium
    return [
        binary,
        *CHROMIUM_FLAGS,
        *flags,
        f"--user-data-dir={work / 'profile'}",
        f"--screenshot={work / 'shot.png'}",
        (work / "page.html").as_uri(),
    ]


def _run(
    box: Confinement, seconds: float, readable: Sequence[Path] = (), flags: Sequence[str] = ()
) -> tuple[int, str]:
    """Chromium's exit status and the last line of what it printed, within `seconds`."""
    binary = Path(get_settings().chromium)
    paths = [*readable] + ([] if str(binary).startswith("/usr/") else [binary.parent])
    argv = box.wrap(chromium_argv(box.work, flags), readable=paths)
    work = str(box.work)
    env = {"HOME": work, "TMPDIR": work, "XDG_CONFIG_HOME": work, "XDG_CACHE_HOME": work}
    env |= {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    with tempfile.TemporaryFile() as log:
        try:
            proc = box.popen(argv, cwd=box.work, env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)  # fmt: skip
        except OSError as exc:
            raise RenderFailed(f"could not start {binary}: {exc}; set CS_CHROMIUM") from exc
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired as exc:
            raise RenderFailed(
                f"Chromium did not finish within {seconds:g} s and was stopped"
                " (CS_LIMITS_THUMBNAIL_SECONDS)"
            ) from exc
        finally:
            stop(proc, inner_first=True)
            reap(proc)
            box.kill_all()
        return proc.returncode, _last_line(log)


def _last_line(log) -> str:
    log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def read_shot(path: Path) -> bytes:
    """The screenshot as written by a process that loaded hostile input: a regular file (no
    link followed), at most SHOT_BYTES, a PNG of the window's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise RenderFailed(f"Chromium wrote no screenshot ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as shot:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RenderFailed("Chromium's screenshot is not a regular file")
        png = shot.read(SHOT_BYTES + 1)
    if len(png) > SHOT_BYTES or png_size(png) != (WIDTH, HEIGHT):
        raise RenderFailed("Chromium's screenshot is not a PNG of the size asked for")
    return png
