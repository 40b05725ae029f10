"""A model that misbehaves on request, for the platform's failure paths.

The adjustment's `control.behavior` chooses what run_model does.
"""

import os
import time

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
]


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
    return {"meta_parameters": {}, "model_parameters": {"control": Control().dump()}}


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
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
    result = good_result()
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
    return result
