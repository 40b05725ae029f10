"""Units of the zero-lost-results guarantees: JSON-safe payloads, the iterative scrubber,
zip member names, the size caps and the bounded stdout tail."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from prefect_cs.core.errors import MalformedOutputs
from prefect_cs.core.jsonsafe import json_safe
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.outputs import build_zips, member_names, safe_member, validate_outputs
from prefect_cs.security.scrubber import Scrubber
from prefect_cs.testing.model_code import model_python, script_runner
from prefect_cs.testing.warm_models import warm_model


def deep(depth: int, leaf: object) -> dict:
    data: object = leaf
    for _ in range(depth):
        data = {"k": [data]}
    return data  # type: ignore[return-value]


# ---- JSON-safe ---------------------------------------------------------------------------


def test_json_safe_replaces_nan_infinity_and_surrogates_and_says_so():
    data = {
        "a": float("nan"),
        "b": [float("inf"), -float("inf"), 1.5, ("x", "bad\udc80")],
        "k\ud800": {"ok": True, "n": None, "i": 3},
    }
    safe, notes = json_safe(data)
    assert safe == {
        "a": None,
        "b": [None, None, 1.5, ["x", "bad\ufffd"]],
        "k\ufffd": data["k\ud800"],
    }
    json.dumps(safe, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert notes == [
        "3 NaN/Infinity number(s) by null replaced",
        "2 string(s) with a lone surrogate (by U+FFFD) replaced",
    ]


def test_json_safe_leaves_clean_data_alone_and_is_iterative():
    clean = {"x": [1, 2.5, "é", {"y": None, "z": False}]}
    assert json_safe(clean) == (clean, [])
    assert json_safe(float("nan")) == (None, ["1 NaN/Infinity number(s) by null replaced"])
    safe, notes = json_safe(deep(20_000, float("nan")))
    assert notes == ["1 NaN/Infinity number(s) by null replaced"]
    for _ in range(20_000):
        safe = safe["k"][0]
    assert safe is None


# ---- the scrubber -------------------------------------------------------------------------


def test_scrubber_masks_any_depth_without_recursion():
    scrub = Scrubber(["s3cr3t"])
    masked = scrub(deep(50_000, "token s3cr3t"))
    for _ in range(50_000):
        masked = masked["k"][0]
    assert masked == "token ***"


def test_scrubber_keeps_shapes_and_masks_keys_and_escaped_forms():
    scrub = Scrubber(['p"w\\d'])
    data = {'p"w\\d': ("a", {'x p"w\\d'}), "j": json.dumps({"v": 'p"w\\d'}), "n": 1.0}
    assert scrub(data) == {"***": ("a", {"x ***"}), "j": '{"v": "***"}', "n": 1.0}
    assert Scrubber([])(data) is data


@pytest.mark.parametrize("secret", ['pw"1', "pw\\1", "p\u00e4ss", 'a"b\\c\n'])
def test_scrubber_masks_a_secret_inside_serialized_json(secret):
    """A model's output or message may hold JSON it serialized itself: the secret is escaped
    there."""
    scrub = Scrubber([secret])
    document = json.dumps({"token": secret, "list": [f"x{secret}y"]})
    assert secret not in document  # only the escaped form is in it
    masked = scrub({"csv": document, "raw": f"t={secret}"})
    assert json.loads(masked["csv"]) == {"token": "***", "list": ["x***y"]}
    assert masked["raw"] == "t=***"


def test_scrubber_masks_the_longest_secret_first():
    scrub = Scrubber(["abc", "abcdef", ""])
    assert scrub("xabcdefx abc") == "x***x ***"
    assert scrub(["abcdef", ("abc",)]) == ["***", ("***",)]


# ---- zip member names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("Summary", "Summary.md"),
        ("notes.md", "notes.md"),
        ("../../x", "____x.md"),
        ("/etc/passwd", "_etc_passwd.md"),
        ("a\\b", "a_b.md"),
        ("nul\x00byte\n", "nul_byte_.md"),
        ("..", "_.md"),
        ("bad\udc80", "bad\ufffd.md"),
        ("   ", "output-1.md"),
        ("", "output-1.md"),
        (None, "output-1.md"),
        (float("nan"), "nan.md"),
    ],
)
def test_safe_member(title, name):
    assert safe_member(title, "md", 1) == name


def test_member_names_number_duplicates_and_cut_long_titles():
    outputs = [
        {"title": t, "media_type": "Text"} for t in ("", "", "a", "a", "a.txt", "x" * 70_000)
    ]
    names = member_names(outputs)
    assert names[:5] == ["output-1.txt", "output-2.txt", "a.txt", "a (2).txt", "a (3).txt"]
    assert len(set(names)) == len(names)
    assert names[5].endswith(".txt") and len(names[5].encode()) <= 200


def test_zips_keep_titles_as_given_and_open_everywhere():
    titles = ["../../x", "", "", "t" * 70_000, "é" * 300]
    outputs = {
        "renderable": [{"media_type": "Text", "title": t, "data": t} for t in titles],
        "downloadable": [],
    }
    description, zips = build_zips("tid", outputs)
    entries = description["renderable"]["outputs"]
    assert [e["title"] for e in entries] == titles
    with zipfile.ZipFile(io.BytesIO(zips["tid_renderable.zip"])) as archive:
        assert archive.namelist() == [e["filename"] for e in entries]
        assert archive.read(entries[0]["filename"]) == b"../../x"


# ---- caps ---------------------------------------------------------------------------------


def test_caps_are_settings_with_defaults(monkeypatch):
    limits = get_settings().limits
    assert limits.output_bytes < limits.result_bytes
    assert limits.light_answer_bytes > 0 and limits.stdout_tail_bytes > 0
    monkeypatch.setenv("CS_LIMITS_OUTPUT_BYTES", "10")
    assert get_settings().limits.output_bytes == 10


def test_output_over_the_cap_names_the_setting(monkeypatch):
    monkeypatch.setenv("CS_LIMITS_OUTPUT_BYTES", "10")
    small = {"media_type": "Text", "title": "", "data": "0123456789"}
    big = {"media_type": "Text", "title": "big", "data": "0123456789!"}
    assert validate_outputs({"renderable": [small], "downloadable": []})
    with pytest.raises(MalformedOutputs, match="CS_LIMITS_OUTPUT_BYTES"):
        validate_outputs({"renderable": [small], "downloadable": [big]})


def test_result_over_the_cap_names_the_setting(tmp_path, monkeypatch):
    from prefect_cs.runtime.model_process import call_model

    monkeypatch.setenv("CS_LIMITS_RESULT_BYTES", "1000")
    runner = script_runner(
        "import json, sys\n"
        "json.dump({'ok': True, 'result': 'x' * 5000, 'seconds': 0}, open(sys.argv[2], 'w'))\n"
    )
    call = call_model(model_python(), "run_model", [], timeout=30, runner=runner)
    assert not call.ok and "CS_LIMITS_RESULT_BYTES" in (call.error or "")


def test_stdout_tail_is_bounded_while_reading(tmp_path, monkeypatch):
    from prefect_cs.runtime.model_process import call_model

    monkeypatch.setenv("CS_LIMITS_STDOUT_TAIL_BYTES", "1000")
    runner = script_runner(
        "import json, sys\n"
        "for i in range(100_000): print('line', i)\n"
        "json.dump({'ok': True, 'result': 1, 'seconds': 0}, open(sys.argv[2], 'w'))\n"
    )
    call = call_model(model_python(), "run_model", [], timeout=30, runner=runner)
    assert call.ok and len(call.output.encode()) <= 1000
    assert call.output.rstrip().endswith("line 99999")


def test_grandchild_holding_stdout_does_not_hold_the_call(tmp_path):
    from prefect_cs.runtime.model_process import call_model

    runner = script_runner(
        "import json, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "json.dump({'ok': True, 'result': 1, 'seconds': 0}, open(sys.argv[2], 'w'))\n"
    )
    call = call_model(model_python(), "run_model", [], timeout=30, runner=runner)
    assert call.ok


def test_light_answer_over_the_cap_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("CS_LIMITS_LIGHT_ANSWER_BYTES", "100000")
    warm = warm_model(tmp_path, "def get_version():\n    return 'v' * 200_000\n")
    try:
        call = warm.call("get_version", [], timeout=30)
        assert not call.ok and "CS_LIMITS_LIGHT_ANSWER_BYTES" in (call.error or "")
        monkeypatch.setenv("CS_LIMITS_LIGHT_ANSWER_BYTES", "1000000")
        assert warm.call("get_version", [], timeout=30).ok  # a fresh child after the kill
    finally:
        warm.stop()


def test_light_answer_reading_stops_at_the_cap(tmp_path, monkeypatch):
    """An answer that never ends is cut at the cap, not read on until the time limit."""
    monkeypatch.setenv("CS_LIMITS_LIGHT_ANSWER_BYTES", "100000")
    functions = "import os, sys, time\ndef get_version():\n"
    functions += "    os.write(int(sys.argv[3]), b'v' * 300_000)\n    time.sleep(60)\n"
    warm = warm_model(tmp_path, functions)
    try:
        call = warm.call("get_version", [], timeout=20)
        assert not call.ok and "CS_LIMITS_LIGHT_ANSWER_BYTES" in (call.error or "")
    finally:
        warm.stop()


# ---- output validation --------------------------------------------------------------------


def one(output: dict) -> dict:
    return {"renderable": [], "downloadable": [output]}


@pytest.mark.parametrize("media_type", ["PNG", "JPEG", "MP3", "MP4", "HDF5", "PDF"])
def test_binary_outputs_are_read_as_cs_storage_reads_them(media_type):
    """Bytes, or base64 text decoded leniently (cs_storage's Base64Serializer), sent on
    canonical."""
    good = {"media_type": media_type, "title": "b", "data": "aGVsbG8="}
    assert validate_outputs(one(good)) == one(good)
    for data in ("aGVs bG8=", "aGVsbG8=\n", b"hello", bytearray(b"hello"), memoryview(b"hello")):
        assert validate_outputs(one({**good, "data": data})) == one(good), data
    for data, said in [
        ("aGVsbG8", "not valid base64"),  # padding: cs-storage refuses it too
        (None, "must be bytes or base64 text, got NoneType"),
        (12, "must be bytes or base64 text, got int"),
    ]:
        with pytest.raises(MalformedOutputs, match=f"downloadable\\[0\\] \\('b'\\).*{said}"):
            validate_outputs(one({**good, "data": data}))


def test_binary_bytes_reach_the_zip_unchanged():
    raw = bytes(range(256)) * 3
    outputs = validate_outputs(one({"media_type": "PDF", "title": "", "data": raw}))
    description, zips = build_zips("tid", outputs)
    (entry,) = description["downloadable"]["outputs"]
    assert entry["title"] == "" and entry["filename"] == "output-1.pdf"
    with zipfile.ZipFile(io.BytesIO(zips["tid_downloadable.zip"])) as archive:
        assert archive.read("output-1.pdf") == raw


def test_child_and_outputs_agree_on_binary_types():
    from prefect_cs.flows.outputs import BINARY_TYPES
    from prefect_cs.runtime.child import BINARY_MEDIA_TYPES

    assert set(BINARY_MEDIA_TYPES) == set(BINARY_TYPES)


def test_child_encodes_bytes_of_binary_outputs_only(tmp_path):
    """run_model may return bytes for PNG/PDF…; bytes for a text type is named, not guessed at."""
    from prefect_cs.runtime.model_process import call_model
    from prefect_cs.testing.model_code import functions_runner

    runner = functions_runner(
        "def run_model(meta, adjustment):\n"
        "    kind = adjustment['kind']\n"
        "    out = {'media_type': kind, 'title': 't', 'data': b'%PDF\\xe2\\x00'}\n"
        "    return {'renderable': [], 'downloadable': [out]}\n"
    )
    call = call_model(model_python(), "run_model", [{}, {"kind": "PDF"}], 30, runner=runner)
    assert call.ok, call.error
    assert call.result["downloadable"][0]["data"] == "JVBERuIA"  # base64 of b"%PDF\xe2\x00"
    call = call_model(model_python(), "run_model", [{}, {"kind": "CSV"}], 30, runner=runner)
    assert not call.ok
    assert "downloadable[0] ('t') is 'CSV' with bytes data; only PNG" in (call.error or "")


def test_missing_keys_are_named_and_bokeh_data_is_any_json_value():
    for key in ("media_type", "title", "data"):
        output = {"media_type": "Text", "title": "t", "data": "d"}
        del output[key]
        with pytest.raises(MalformedOutputs, match=f"downloadable\\[0\\] .*has no '{key}'"):
            validate_outputs(one(output))
    plot = {"media_type": "bokeh", "title": "plot", "data": {"doc": []}}
    for data in ({"doc": []}, [1], "a string", 3):  # cs-storage json.dumps whatever it is given
        assert validate_outputs(one({**plot, "data": data})) == one({**plot, "data": data})
    _, zips = build_zips("tid", one({**plot, "data": "a string"}))
    with zipfile.ZipFile(io.BytesIO(zips["tid_downloadable.zip"])) as archive:
        assert archive.read("plot.json") == b'"a string"'


def test_bokeh_member_is_strict_json():
    plot = {"media_type": "bokeh", "title": "plot", "data": {"y": [1.0, float("nan")]}}
    _, zips = build_zips("tid", {"renderable": [plot], "downloadable": []})
    with zipfile.ZipFile(io.BytesIO(zips["tid_renderable.zip"])) as archive:
        assert archive.read("plot.json") == b'{"y": [1.0, null]}'


def test_long_names_use_the_whole_budget_and_cap_errors_quote_80_characters(monkeypatch):
    (name,) = member_names([{"title": "x" * 300, "media_type": "Text"}])
    assert len(name.encode()) == 200 and name.endswith(".txt")
    monkeypatch.setenv("CS_LIMITS_OUTPUT_BYTES", "1")
    with pytest.raises(MalformedOutputs) as raised:
        validate_outputs(one({"media_type": "Text", "title": "t" * 100, "data": "xx"}))
    assert repr("t" * 80) in str(raised.value)
