"""Thumbnails of renderable outputs: real Chromium, real PNGs, a real simulation, real attacks.

The renderer (runtime/render.py) loads model output, so these tests check it the way the model
sandbox's tests check model code: it runs as the model's uid, fetches nothing (a recording HTTP
server on this machine receives no request), and a renderer that fails or hangs leaves the
result's delivery as it was: one PUT, SUCCESS, the flow Completed.
"""

from __future__ import annotations

import http.server
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_cs.runtime import render
from prefect_cs.runtime.render import (
    HEIGHT,
    PNG_SIGNATURE,
    WIDTH,
    NotRenderable,
    RenderFailed,
    page,
    png_size,
    thumbnail,
)
from prefect_cs.runtime.sandbox import DEFAULT_MODEL_UID, Sandbox, switch_user

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the model uid needs a root platform")


def tiny_png(width: int, height: int, rgb: bytes = b"\xff\x00\x00") -> bytes:
    """A real PNG of one colour, without an image library."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"IEND", b""))
    )


def assert_thumbnail(png: bytes) -> None:
    assert png.startswith(PNG_SIGNATURE), png[:16]
    assert png_size(png) == (WIDTH, HEIGHT)


# ---- the page: escaping and policy (no browser) -----------------------------------------


def test_text_and_markdown_are_escaped_and_the_policy_comes_first():
    hostile = "<script>alert(1)</script><img src=http://example.invalid/x>"
    for media_type in ("Text", "Markdown", "CSV"):
        document = page(media_type, "<b>title</b>", hostile.encode())
        assert "<script>" not in document and "<img src=http" not in document, media_type
        assert "&lt;script&gt;" in document and "&lt;b&gt;title&lt;/b&gt;" in document
        head = document[: document.index("<style>")]
        assert "Content-Security-Policy" in head and "default-src 'none'" in head
        assert "img-src data:;" in head and "script-src 'none'" in head


def test_a_table_goes_into_a_sandboxed_frame_as_escaped_text():
    document = page("table", "t", b'<table><tr><td>1</td></tr></table>"><script>x()</script>')
    assert '<iframe sandbox="" srcdoc="' in document
    assert "<script>" not in document and "&lt;script&gt;" in document
    assert document.count("<iframe") == 1  # the quote in the output did not end the attribute


def test_image_bombs_are_refused_from_their_header(monkeypatch):
    monkeypatch.setenv("CS_LIMITS_THUMBNAIL_PIXELS", "1000000")
    bomb = tiny_png(1, 1)[:16] + struct.pack(">II", 50_000, 50_000) + b"\x08\x02\x00\x00\x00"
    with pytest.raises(NotRenderable, match="CS_LIMITS_THUMBNAIL_PIXELS"):
        page("PNG", "bomb", bomb)
    jpeg = b"\xff\xd8\xff\xe0\x00\x04\x00\x00\xff\xc0\x00\x11\x08" + struct.pack(">HH", 4000, 3000)
    assert render.jpeg_size(jpeg) == (3000, 4000)
    with pytest.raises(NotRenderable, match="3,000 x 4,000 pixels"):
        page("JPEG", "big", jpeg)
    with pytest.raises(NotRenderable, match="not a readable PNG"):
        page("PNG", "fake", PNG_SIGNATURE + bytes(range(64)))
    assert "data:image/png;base64," in page("PNG", "ok", tiny_png(900, 900))


@pytest.mark.parametrize("media_type", ["MP3", "MP4", "HDF5", "PDF"])
def test_media_types_without_a_thumbnail_are_named(media_type):
    with pytest.raises(NotRenderable, match=f"{media_type} outputs get no thumbnail"):
        thumbnail(media_type, "x", b"data")


@pytest.mark.parametrize("mode", ["uid", "none"])
def test_no_render_outside_the_bubblewrap_sandbox(mode):
    """Without bubblewrap Chromium would share the job's network: no thumbnail, named why."""
    with pytest.raises(RenderFailed, match="only in the bubblewrap sandbox"):
        render.screenshot(page("Text", "t", b"x"), sandbox=Sandbox(mode, DEFAULT_MODEL_UID))


def test_a_missing_chromium_is_named_with_its_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CS_CHROMIUM", str(tmp_path / "chromium"))
    with pytest.raises(RenderFailed, match=r"apt-get install chromium.*CS_CHROMIUM"):
        render.screenshot(page("Text", "t", b"x"))


# ---- real Chromium -----------------------------------------------------------------------


@needs_chromium
def test_chromium_renders_real_pngs_that_differ_by_input():
    shots = {
        "Text": thumbnail("Text", "log", b"first output\n" * 5).png,
        "Text2": thumbnail("Text", "log", b"a different output, longer" * 20).png,
        "table": thumbnail("table", "t", b"<table><tr><td>1</td><td>2</td></tr></table>").png,
        "PNG": thumbnail("PNG", "p", tiny_png(40, 30)).png,
        "bokeh": thumbnail("bokeh", "My chart", b'{"doc": {}}').png,
    }
    for png in shots.values():
        assert_thumbnail(png)
        assert len(png) > 1000  # not a blank page: blank 640x480 PNGs are a few hundred bytes
    assert len(set(shots.values())) == len(shots)


@needs_chromium
@needs_root
def test_chromium_runs_as_the_model_uid_not_root():
    """Every Chromium process seen while a render runs (found by its work folder) is the model's
    uid, none is root."""
    seen: dict[int, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(chromium_uids())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert_thumbnail(thumbnail("Text", "uid", b"who am I").png)
    finally:
        done.set()
        watcher.join()
    assert seen, "no Chromium process was seen"
    assert set(seen.values()) == {DEFAULT_MODEL_UID}, seen


def chromium_uids() -> dict[int, int]:
    """pid -> real uid of the processes running Chromium on a thumbnail's work folder."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if b"chromium" in argv[0] and any(b"cs-thumbnail-" in a for a in argv[1:]):
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            found[int(proc.name)] = int(uid_line.split()[1])
    return found


# ---- attacks: a model's table that fetches ------------------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"x")

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on this machine's loopback that records every path asked of it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.hits
    server.shutdown()
    server.server_close()


def fetching_table(base: str) -> bytes:
    return (
        f'<table><tr><td>x<img src="{base}/img"></td></tr></table>'
        f'<link rel="stylesheet" href="{base}/css"><iframe src="{base}/frame"></iframe>'
        f'<script src="{base}/script"></script><script>fetch("{base}/fetch")</script>'
        f'<meta http-equiv="refresh" content="0;url={base}/refresh">'
    ).encode()


def unsandboxed_chromium(document: str, flags: tuple[str, ...] = ()) -> None:
    """The control: Chromium as the model uid with this machine's network, no bubblewrap."""
    work = Path(tempfile.mkdtemp(prefix="cs-control-"))
    try:
        (work / "page.html").write_text(document)
        os.chown(work, DEFAULT_MODEL_UID, DEFAULT_MODEL_UID)
        for path in work.iterdir():
            os.chown(path, DEFAULT_MODEL_UID, DEFAULT_MODEL_UID)
        argv = [
            CHROMIUM,
            *render.CHROMIUM_FLAGS,
            *flags,
            f"--user-data-dir={work / 'profile'}",
            f"--screenshot={work / 'shot.png'}",
            (work / "page.html").as_uri(),
        ]
        env = {"HOME": str(work), "PATH": "/usr/bin:/bin", "TMPDIR": str(work)}
        subprocess.run(
            argv, env=env, cwd=work, preexec_fn=switch_user(DEFAULT_MODEL_UID),
            capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


@needs_chromium
@needs_root
def test_a_fetching_table_reaches_nothing(listener):
    base, hits = listener
    table = fetching_table(base)
    document = page("table", "attack", table)
    assert f"{base}/img" in document and f"{base}/fetch" in document  # the page holds the attack
    # The control: the model's HTML as it is, in a browser with this machine's network, fetches.
    unsandboxed_chromium(table.decode())
    assert any(hit.startswith(("/img", "/css", "/script")) for hit in hits), hits
    hits.clear()
    # The platform's page alone (its policy and frame), even with the network: nothing.
    unsandboxed_chromium(document)
    assert hits == []
    # The renderer (the page, in the sandbox without network): a thumbnail, and nothing.
    assert_thumbnail(thumbnail("table", "attack", table).png)
    time.sleep(0.5)
    assert hits == []


@needs_chromium
@needs_root
def test_the_sandbox_alone_keeps_an_unprotected_page_off_the_network(listener):
    """Without the page's policy (the model's HTML loaded as it is), the sandbox still holds."""
    base, hits = listener
    try:
        render.screenshot(fetching_table(base).decode())
    except RenderFailed as exc:  # its meta refresh led nowhere: Chromium took no screenshot
        assert "no screenshot" in str(exc)
    time.sleep(0.5)
    assert hits == []


# ---- bokeh, drawn by the model's own BokehJS ---------------------------------------------


@pytest.fixture
def bokeh_root() -> Iterator[Path]:
    """A folder the model's uid can reach, as the platform's venvs folder is (not pytest's
    tmp_path, which only root may enter)."""
    root = Path(tempfile.mkdtemp(prefix="cs-bokeh-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def bokeh_environment(root: Path, scripts: dict[str, str] | None = None) -> Path:
    """A model venv's layout holding BokehJS: the real files of the bokeh package installed
    here (as `pip install bokeh` in the model's venv puts them), or the given scripts."""
    import bokeh

    js = root / "venv/lib/python3.11/site-packages/bokeh/server/static/js"
    js.mkdir(parents=True)
    if scripts is None:
        real = Path(bokeh.__file__).parent / "server/static/js"
        for name in render.BOKEH_FILES:
            shutil.copy(real / name, js / name)
    else:
        for name, text in scripts.items():
            (js / name).write_text(text)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the model's uid reads its venv
    return root / "venv"


def bokeh_item(ys: list[float]) -> bytes:
    """What a C/S app returns for a bokeh output: `bokeh.embed.json_item` of a figure."""
    import json

    from bokeh.embed import json_item
    from bokeh.plotting import figure

    chart = figure(width=600, height=380)
    chart.line(list(range(len(ys))), ys, line_width=3)
    return json.dumps(json_item(chart)).encode()


def test_a_bokeh_page_embeds_the_output_as_data_not_markup(tmp_path):
    """A `</script>` in the model's JSON cannot end the data block and start markup."""
    item = b'{"doc": {"roots": [], "title": "</script><img src=x onerror=alert(1)>"}}'
    document = render.bokeh_page("t", item, [tmp_path / "bokeh.min.js"])
    assert "</script><img" not in document and "\\u003c/script>" in document
    assert document.index("Content-Security-Policy") < document.index("<script")
    with pytest.raises(NotRenderable, match="json_item"):
        render.bokeh_page("t", b'{"not": "bokeh"}', [])


@needs_chromium
@needs_root
def test_bokeh_outputs_are_drawn_by_the_models_own_bokehjs(bokeh_root):
    """Two charts differing only in their data give two different thumbnails, neither the
    placeholder a bokeh output gets where the model's environment is not at hand."""
    environment = bokeh_environment(bokeh_root)
    rising, falling = bokeh_item([1, 2, 3, 4, 5]), bokeh_item([5, 4, 3, 2, 1])
    placeholder = thumbnail("bokeh", "chart", rising).png
    shots = [thumbnail("bokeh", "chart", item, environment).png for item in (rising, falling)]
    for png in shots:
        assert_thumbnail(png)
    assert len({placeholder, *shots}) == 3
    without_bokeh = bokeh_root / "empty-venv"
    without_bokeh.mkdir()
    assert thumbnail("bokeh", "chart", rising, without_bokeh).png == placeholder


@needs_chromium
@needs_root
def test_a_hostile_bokehjs_reaches_nothing(bokeh_root, listener):
    """The model writes its venv, so its "BokehJS" is its code: it runs, in the sandbox, and
    fetches nothing; the control (the same page without the platform's policy, outside the
    sandbox) shows the script did run and would have reached this machine."""
    base, hits = listener
    hostile = (
        f'fetch("{base}/fetch"); new Image().src = "{base}/img";'
        f' window.Bokeh = {{embed: {{embed_item: () => fetch("{base}/embed")}}}};'
    )
    environment = bokeh_environment(bokeh_root, {"bokeh.min.js": hostile})
    item = b'{"doc": {"roots": []}, "root_id": "x"}'
    scripts = render.bokeh_scripts(environment)
    document = render.bokeh_page("attack", item, scripts)
    control = document.replace(render.BOKEH_POLICY, "")
    unsandboxed_chromium(control, render.SCRIPT_FLAGS)  # as the renderer runs a bokeh page
    assert {"/fetch", "/embed"} <= set(hits), hits  # the attack ran
    hits.clear()
    assert_thumbnail(thumbnail("bokeh", "attack", item, environment).png)
    time.sleep(0.5)
    assert hits == []


# ---- the simulate flow ------------------------------------------------------------------


def run_all_renderable():
    from prefect_cs.flows.simulate import simulate

    task_id = str(uuid.uuid4())
    adjustment = {"control": {"behavior": [{"value": "all_renderable"}]}}
    state = simulate("tests", "Misbehaving", task_id, {}, adjustment, None, return_state=True)
    return task_id, state


@needs_chromium
def test_each_renderable_output_gets_its_png(misbehaving, webapp, cs_home, monkeypatch):
    monkeypatch.setenv("CS_LIMITS_THUMBNAIL_COUNT", "20")
    task_id, state = run_all_renderable()
    assert state.is_completed(), state.message
    body = webapp.only_put(task_id)
    outputs = body["outputs"]["renderable"]["outputs"]
    kinds = [o["media_type"] for o in outputs]
    assert kinds == ["Markdown", "table", "Text", "bokeh", "PNG", "CSV", "PDF"]
    shots = {}
    for output in outputs:
        path = cs_home / "outputs" / f"{output['id']}.png"
        if output["media_type"] == "PDF":
            assert not path.exists()
            continue
        png = path.read_bytes()
        assert_thumbnail(png)
        assert path.stat().st_mode & 0o777 == 0o600
        shots[output["media_type"]] = png
    assert len(set(shots.values())) == len(shots)
    for output in body["outputs"]["downloadable"]["outputs"]:
        assert not (cs_home / "outputs" / f"{output['id']}.png").exists()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder the model uid can reach (pytest's tmp_path is under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="cs-test-chromium-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def fake_chromium(folder: Path, body: str) -> Path:
    """A script where Chromium should be, readable by the model uid in the sandbox."""
    script = folder / "chromium"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("broken", ["hangs", "missing", "crashes"])
def test_a_broken_renderer_leaves_the_delivery_as_it_was(
    misbehaving, webapp, cs_home, monkeypatch, open_folder, broken
):
    binary = {
        "hangs": lambda: fake_chromium(open_folder, "sleep 600"),
        "missing": lambda: open_folder / "no-such-chromium",
        "crashes": lambda: fake_chromium(open_folder, "echo boom >&2; kill -SEGV $$"),
    }[broken]()
    monkeypatch.setenv("CS_CHROMIUM", str(binary))
    monkeypatch.setenv("CS_LIMITS_THUMBNAIL_COUNT", "20")
    monkeypatch.setenv("CS_LIMITS_THUMBNAIL_SECONDS", "2")
    started = time.monotonic()
    task_id, state = run_all_renderable()
    ended = time.monotonic()
    assert state.is_completed(), state.message
    body = webapp.only_put(task_id)  # exactly one PUT, answered 200
    assert body["status"] == "SUCCESS"
    assert state.result() == body  # the flow's payload is what was delivered
    for output in body["outputs"]["renderable"]["outputs"]:
        assert not (cs_home / "outputs" / f"{output['id']}.png").exists()
    if broken == "hangs":  # 6 renders of 2 s each, not 600 s, and all after the PUT
        assert ended - started < 120, ended - started
        (put,) = [r for r in webapp.about(task_id) if r.method == "PUT"]
        assert ended - put.received >= 6 * 2, "the result waited for the thumbnails"
