"""Runs one cs_config function inside the model's own environment.

Standard library only: this file is copied into every model environment
(virtualenv or image) and must not depend on the platform. The result goes to a
file, not stdout, so whatever the model prints cannot be mistaken for it.

run_model's outputs may carry raw `bytes` for binary media types: Compute
Studio passed the result through `cs_storage.serialize_to_json`, which
base64-encodes them, so real apps return bytes for a PDF or a PNG. They are
encoded here, where the bytes are, since JSON cannot carry them.

    python -I child.py REQUEST.json RESPONSE.json
"""

import base64
import json
import sys
import time
import traceback

# cs-storage's Base64Serializer media types (flows/outputs.BINARY_TYPES; a test keeps them equal).
BINARY_MEDIA_TYPES = ("PNG", "JPEG", "MP3", "MP4", "HDF5", "PDF")
BYTES_LIKE = (bytes, bytearray, memoryview)


def _call(request: dict) -> dict:
    from cs_config import functions

    function = getattr(functions, request["function"])
    started = time.perf_counter()
    result = function(*request.get("args", []))
    seconds = time.perf_counter() - started
    if request["function"] == "run_model":
        result = encode_binary_outputs(result)
    return {"ok": True, "result": result, "seconds": seconds}


def encode_binary_outputs(result: object) -> object:
    """A copy of run_model's result with bytes data of binary outputs as base64 text, as
    cs_storage.serialize_to_json does; anything else is left for the platform to judge."""
    if not isinstance(result, dict):
        return result
    encoded = dict(result)
    for category in ("renderable", "downloadable"):
        if isinstance(result.get(category), list):
            encoded[category] = [_encode_output(output) for output in result[category]]
    return encoded


def _encode_output(output: object) -> object:
    if not isinstance(output, dict) or output.get("media_type") not in BINARY_MEDIA_TYPES:
        return output
    if not isinstance(output.get("data"), BYTES_LIKE):
        return output
    return {**output, "data": base64.b64encode(output["data"]).decode("ascii")}


def _not_serializable(request: dict, response: dict, exc: Exception) -> str:
    """Why the answer cannot be JSON, naming a bytes output of a text type when that is it."""
    result = response.get("result")
    for category in ("renderable", "downloadable"):
        outputs = result.get(category) if isinstance(result, dict) else None
        for index, output in enumerate(outputs if isinstance(outputs, list) else []):
            if (
                isinstance(output, dict)
                and isinstance(output.get("data"), BYTES_LIKE)
                and output.get("media_type") not in BINARY_MEDIA_TYPES
            ):
                return (
                    f"{request['function']} returned data that is not JSON-serializable: output"
                    f" {category}[{index}] ({output.get('title')!r}) is"
                    f" {output.get('media_type')!r} with bytes data; only"
                    f" {', '.join(BINARY_MEDIA_TYPES)} may be bytes: return text (str) for it"
                )
    return f"{request['function']} returned data that is not JSON-serializable: {exc}"


def _version() -> object:
    try:
        from cs_config import functions

        return str(functions.get_version())
    except Exception:  # the version is informative; a broken get_version must not fail a run
        return None


def main(request_path: str, response_path: str) -> None:
    with open(request_path) as f:
        request = json.load(f)
    started = time.perf_counter()
    try:
        response = _call(request)
    except BaseException:  # the run time counts on FAIL too: the web app bills by it
        seconds = time.perf_counter() - started
        response = {"ok": False, "traceback": traceback.format_exc(), "seconds": seconds}
    response["version"] = _version() if request.get("with_version") else None
    try:
        text = json.dumps(response)
    except (TypeError, ValueError) as exc:
        text = json.dumps(
            {
                "ok": False,
                "seconds": response.get("seconds"),
                "version": response.get("version"),
                "traceback": _not_serializable(request, response, exc),
            }
        )
    with open(response_path, "w") as f:
        f.write(text)


def serve(fd_in: int, fd_out: int, reap: bool = False) -> None:
    """Answer JSON-line requests on a private pipe until it closes: a warm model for light calls.

    reap: in the sandbox's own pid namespace, whatever a call started dies when it answers.
    """
    with open(fd_in) as requests, open(fd_out, "w") as responses:
        for line in requests:
            request = json.loads(line)
            try:
                response = _call(request)
                text = json.dumps(response)
            except BaseException:
                text = json.dumps({"ok": False, "traceback": traceback.format_exc()})
            responses.write(text + "\n")
            responses.flush()
            if reap:
                _reap()


def _reap() -> None:
    """Kill every process of this pid namespace but its init (1) and this one."""
    import os
    import signal

    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), reap="--reap" in sys.argv[4:])
    else:
        main(sys.argv[1], sys.argv[2])
