"""Runs one cs_config function inside the model's own environment.

Standard library only: this file is copied into every model environment
(virtualenv or image) and must not depend on the platform. The result goes to a
file, not stdout, so whatever the model prints cannot be mistaken for it.

run_model's outputs may carry raw `bytes` for binary media types: Compute
Studio passed the result through `cs_storage.serialize_to_json`, which
base64-encodes them, so real apps return bytes for a PDF or a PNG. They are
encoded here, where the bytes are, since JSON cannot carry them.

    python -I child.py REQUEST.json RESPONSE.json
    python -I child.py --serve FD_IN FD_OUT [--reap]        (a warm model over a private pipe)
    python -I child.py --serve-paths IN OUT [--reap] [--empty DIR]  (the same over named pipes:
                                                             a warm model container)
    python -I child.py --wait-for REQUEST RESPONSE SECONDS  (a model container beside the flow's
                                                             in one pod: waits for the request)
"""

import base64
import json
import os
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


def serve(fd_in: int, fd_out: int, reap: bool = False, empty: str | None = None) -> None:
    """Answer JSON-line requests on a private pipe until it closes: a warm model for light calls.

    This process is a zygote: it has imported the model once, and each request is answered by
    a fresh fork of it, which exits after answering. So nothing one user's call does (module
    state, a thread it started, an open file) is there for the next user's call: the next
    fork starts again from the state right after import. Every answer line carries the
    request's `call` id, so a line written late (by a process of an earlier call) is never
    taken for the answer to a later one. The platform kills what a call left running from
    outside (its cgroup); `reap` does the same from inside when there is no cgroup.
    """
    _import_model()
    with open(fd_in) as requests:
        for line in requests:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _answer_in_fork(request, fd_out)
            problem = _wait_call(pid, request.get("timeout"))
            if problem:
                _write_line(
                    fd_out, {"call": request.get("call"), "ok": False, "traceback": problem}
                )
            if reap:
                _reap()
            if empty:
                _empty(empty)


def _import_model() -> None:
    """Import the model before any call, so every fork starts warm; a failing import is
    reported by each call (the fork imports again and raises), not here."""
    try:
        from cs_config import functions  # noqa: F401
    except BaseException:  # noqa: BLE001 - reported per call
        pass


def _answer_in_fork(request: dict, fd_out: int) -> None:
    """In the call's own process: answer, then exit without running the model's atexit code."""
    try:
        response = _call(request)
        response["call"] = request.get("call")
        text = json.dumps(response)
    except BaseException:  # noqa: BLE001 - every failure is an answer
        text = json.dumps(
            {"call": request.get("call"), "ok": False, "traceback": traceback.format_exc()}
        )
    try:
        _write_line(fd_out, text)
    finally:
        os._exit(0)


def _write_line(fd_out: int, answer: object) -> None:
    data = (answer if isinstance(answer, str) else json.dumps(answer)).encode() + b"\n"
    while data:
        data = data[os.write(fd_out, data) :]


def _wait_call(pid: int, timeout: object = None) -> str | None:
    """Wait for a call's process; why it failed to answer, if it died of a signal. With a
    timeout (a model container's requests carry one: the platform cannot kill across
    containers), a call still running after it is killed, so the next call is answered."""
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return f"the call did not answer within {timeout:g} seconds and was stopped"
            time.sleep(0.02)
    else:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                return None
    if os.WIFSIGNALED(status):
        return f"the call's process was killed by signal {os.WTERMSIG(status)} before it answered"
    code = os.waitstatus_to_exitcode(status)
    return f"the call's process exited with code {code} before it answered" if code else None


def _reap() -> None:
    """Kill every process of this pid namespace but its init (1) and this one; when this one
    is the init (a container's), also collect what it inherited, so no zombie holds a pid."""
    import signal

    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
    if os.getpid() == 1:
        _collect_zombies()


def _collect_zombies() -> None:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def _empty(folder: str) -> None:
    """Remove what a call left in the work folder (links are removed, never followed). The
    rule of warm.py `empty_folder`, written again because this runner imports nothing of the
    platform (it runs in the model's interpreter, in the model's image)."""
    import shutil

    for entry in os.scandir(folder):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def serve_paths(path_in: str, path_out: str, reap: bool = False, empty: str | None = None) -> None:
    """`serve` over two named pipes the platform made in the call's exchange folder: a model
    container cannot inherit the platform's file descriptors, but a FIFO bound in works the
    same. `empty`: the work folder, emptied after each call (a container has no outside view
    of its tmpfs, as the process tier's platform has)."""
    fd_out = os.open(path_out, os.O_WRONLY)
    fd_in = os.open(path_in, os.O_RDONLY)
    serve(fd_in, fd_out, reap=reap, empty=empty)


REQUEST_POLL = 0.01  # a stat every 10 ms while waiting: the request is seen within that


def wait_for(request_path: str, response_path: str, seconds: float) -> int:
    """The model container of a pod whose other container runs the flow: wait (bounded) for
    the flow's request, answer it, exit. A request of `{"function": null}` means the flow
    ended without a call (it failed before); exit 0 so the pod ends too. The model is imported
    first, while the flow still prepares the request."""
    deadline = time.monotonic() + seconds
    _import_model()
    while not os.path.exists(request_path):
        if time.monotonic() > deadline:
            print(f"no request in {request_path} within {seconds:g} seconds", file=sys.stderr)
            return 3
        time.sleep(REQUEST_POLL)
    with open(request_path) as f:
        if json.load(f).get("function") is None:
            return 0
    partial = response_path + ".part"  # the flow sees the answer whole, or not at all
    main(request_path, partial)
    sys.stdout.flush()  # the output is the call's log: whole before the answer is
    sys.stderr.flush()
    os.replace(partial, response_path)
    os._exit(0)  # the flow reads the answer now: no interpreter teardown to wait for


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), reap="--reap" in sys.argv[4:])
    elif sys.argv[1] == "--serve-paths":
        rest = sys.argv[4:]
        empty = rest[rest.index("--empty") + 1] if "--empty" in rest else None
        serve_paths(sys.argv[2], sys.argv[3], reap="--reap" in rest, empty=empty)
    elif sys.argv[1] == "--wait-for":
        sys.exit(wait_for(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        main(sys.argv[1], sys.argv[2])
