"""Runs one cs_config function inside the model's own environment.

Standard library only: this file is copied into every model environment
(virtualenv or image) and must not depend on the platform. The result goes to a
file, not stdout, so whatever the model prints cannot be mistaken for it.

    python -I child.py REQUEST.json RESPONSE.json
"""

import json
import sys
import time
import traceback


def _call(request: dict) -> dict:
    from cs_config import functions

    function = getattr(functions, request["function"])
    started = time.perf_counter()
    result = function(*request.get("args", []))
    seconds = time.perf_counter() - started
    return {"ok": True, "result": result, "seconds": seconds}


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
                "traceback": f"{request['function']} returned data that is not JSON-serializable: {exc}",
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
