"""A model that misbehaves on request, for the platform's failure paths.

The adjustment's `control.behavior` chooses what run_model (and validate_inputs)
does; the meta parameter dict's `behavior` key chooses what get_inputs does ("slow" sleeps
`seconds` and names the call: every answer from one model call carries the same name).
"""

import base64
import json
import os
import struct
import sys
import time
import zlib

import paramtools

BEHAVIORS = [
    "ok",
    "raise",
    "hang",
    "segfault",
    "exit",
    "oom",
    "bad_media_type",
    "missing_key",
    "not_serializable",
    "print_noise",
    "leak_secret",
    "leak_secret_raise",
    "long_title",
    "surrogate_raise",
    "nan",
    "deep_nested",
    "unsafe_titles",
    "big_output",
    "flood_stdout",
    "parse_nan",
    "parse_surrogate",
    "parse_raise",
    "pdf_bytes",
    "empty_title",
    "csv_bytes",
    "many_outputs",
    "forge_version",
    "all_renderable",
]

# A small PDF whose second line is binary (as real PDFs start): what run_model returns raw.
PDF_BYTES = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class Control(paramtools.Parameters):
    array_first = True
    defaults = {
        "behavior": {
            "title": "Behavior",
            "description": "What run_model does.",
            "type": "str",
            "value": "ok",
            "validators": {"choice": {"choices": BEHAVIORS}},
        },
    }


def get_version():
    return "0.3.0"


def get_inputs(meta_param_dict):
    behavior = (meta_param_dict or {}).get("behavior")
    if behavior == "raise":
        raise RuntimeError("get_inputs exploded on purpose \udc80")
    inputs = {"meta_parameters": {}, "model_parameters": {"control": Control().dump()}}
    if behavior == "nan":
        inputs["meta_parameters"]["score"] = {"value": float("nan"), "title": "bad \udc80"}
    if behavior == "huge":
        inputs["meta_parameters"]["padding"] = {"value": "x" * int(meta_param_dict["size"])}
    if behavior == "slow":  # a model call of known length, and a mark of which call answered
        time.sleep(float(meta_param_dict["seconds"]))
        inputs["meta_parameters"]["call"] = {"value": os.urandom(8).hex()}
    return inputs


def _requested(adjustment):
    """The behavior asked for, read raw: validate_inputs misbehaves before ParamTools checks it."""
    try:
        return adjustment["control"]["behavior"][0]["value"]
    except (KeyError, IndexError, TypeError):
        return None


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    requested = _requested(adjustment)
    if requested == "parse_raise":
        raise RuntimeError("validate_inputs exploded on purpose")
    if requested == "parse_nan":
        return {"errors_warnings": errors_warnings, "custom_adjustment": {"x": float("nan")}}
    if requested == "parse_surrogate":
        errors_warnings["control"]["warnings"]["behavior"] = ["odd byte \udc80 here"]
        return {"errors_warnings": errors_warnings}
    control = Control()
    control.adjust(adjustment.get("control", {}), raise_errors=False)
    errors_warnings["control"]["errors"].update(control.errors)
    return {"errors_warnings": errors_warnings}


def good_result():
    return {
        "renderable": [{"media_type": "Markdown", "title": "Summary", "data": "# All went well"}],
        "downloadable": [{"media_type": "Text", "title": "notes", "data": "nothing to report"}],
    }


def run_model(meta_param_dict, adjustment):
    control = Control()
    control.adjust(adjustment.get("control", {}))
    behavior = str(control.behavior)
    if behavior == "raise":
        raise ValueError("model exploded on purpose")
    if behavior == "hang":
        time.sleep(3600)
    if behavior == "segfault":
        import ctypes

        ctypes.string_at(0)
    if behavior == "exit":
        os._exit(3)
    if behavior == "oom":
        hog = []
        for _ in range(200):
            block = bytearray(100 * 1024 * 1024)
            block[::4096] = b"x" * len(block[::4096])
            hog.append(block)
    secret = os.environ.get("DEMO_TOKEN", "")
    if behavior == "leak_secret_raise":
        raise RuntimeError(f"cannot log in with token {secret}")
    if behavior == "surrogate_raise":
        raise ValueError("cannot decode \udc80 in the input")
    result = good_result()
    misbehave(behavior, result)
    if behavior == "leak_secret":
        print(f"my token is {secret}")
        result["renderable"][0]["data"] += f"\n\ntoken: {secret}"
        result["downloadable"].append(
            {"media_type": "CSV", "title": "token", "data": f"token\n{secret}\n"}
        )
    if behavior == "bad_media_type":
        result["renderable"][0]["media_type"] = "GIF"
    if behavior == "missing_key":
        del result["renderable"][0]["data"]
    if behavior == "not_serializable":
        result["downloadable"][0]["data"] = object()
    if behavior == "print_noise":
        for i in range(10000):
            print(f'{{"renderable": "noise line {i}"}}')
    if behavior == "forge_version":
        forge_answer(result)
    return result


def forge_answer(result):
    """Write the runner's answer file (its last argument) as the runner would, claiming another
    version, and leave before the runner writes its own: the model's word, not get_version's."""
    answer = {"ok": True, "result": result, "seconds": 0.1, "version": "9.9"}
    with open(sys.argv[-1], "w") as f:
        json.dump(answer, f)
    os._exit(0)


def nested(depth):
    data = {"leaf": "deep"}
    for _ in range(depth):
        data = {"child": data}
    return data


def misbehave(behavior, result):
    """Outputs the platform must survive: odd titles, NaN, deep nesting, size, a flood of prints."""
    renderable, downloadable = result["renderable"], result["downloadable"]
    if behavior == "long_title":
        renderable[0]["title"] = "t" * 70_000
    if behavior == "nan":
        renderable.append(
            {"media_type": "bokeh", "title": "plot", "data": {"y": [1.0, float("nan")]}}
        )
        renderable[0]["title"] = float("nan")
    if behavior == "deep_nested":
        renderable.append({"media_type": "bokeh", "title": "deep", "data": nested(600)})
    if behavior == "unsafe_titles":
        for title in ("../../escape", "/etc/passwd", "nul\x00byte", "", "", "notes", "a\\b"):
            downloadable.append({"media_type": "Text", "title": title, "data": title})
    if behavior == "big_output":
        downloadable.append({"media_type": "Text", "title": "big", "data": "x" * 3_000_000})
    if behavior in ("pdf_bytes", "empty_title", "csv_bytes"):
        binary_outputs(behavior, renderable, downloadable)
    if behavior == "all_renderable":  # one of each media type the outputs page shows, and a PDF
        renderable.extend(every_renderable())
    if behavior == "flood_stdout":
        line = "y" * 1023
        for _ in range(20 * 1024):
            print(line)
    if behavior == "many_outputs":  # tiny, all titled alike: the count is the burden
        downloadable.extend(
            {"media_type": "Text", "title": "n", "data": "1"} for _ in range(20_000)
        )


def every_renderable():
    return [
        {"media_type": "table", "title": "table", "data": "<table><tr><td>1</td></tr></table>"},
        {"media_type": "Text", "title": "text", "data": "a <b>text</b> & more"},
        {"media_type": "bokeh", "title": "chart", "data": {"target_id": None, "doc": {}}},
        {"media_type": "PNG", "title": "picture", "data": tiny_png(8, 6)},
        {"media_type": "CSV", "title": "numbers", "data": "a,b\n1,2\n"},
        {"media_type": "PDF", "title": "paper", "data": PDF_BYTES},
    ]


def tiny_png(width, height):
    """A real PNG (a red rectangle), made without an image library."""

    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def binary_outputs(behavior, renderable, downloadable):
    """What real apps return and Compute Studio accepted (cs_storage.serialize_to_json):
    raw bytes for binary media types, base64 text with line breaks, an empty title."""
    if behavior == "pdf_bytes":
        downloadable.append({"media_type": "PDF", "title": "report", "data": PDF_BYTES})
        renderable.append(
            {"media_type": "PNG", "title": "chart", "data": base64.encodebytes(PNG_BYTES).decode()}
        )
    if behavior == "empty_title":
        renderable.append({"media_type": "PDF", "title": "", "data": bytearray(PDF_BYTES)})
        downloadable[0]["title"] = ""
    if behavior == "csv_bytes":
        downloadable.append({"media_type": "CSV", "title": "table", "data": b"a,b\n1,2\n"})
