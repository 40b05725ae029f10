"""A model that attacks the platform on every call, and reports what it got.

run_model returns the report as its outputs; get_inputs puts it in the defaults;
install.sh prints it; the model's own tests assert it got nothing. The targets
(where the platform keeps what an attacker wants) come in targets.json, written
by the test that publishes this app: a real attacker would guess them.
"""

import os
import threading

from cs_config import attack

SEEN = []  # module state: what earlier calls of this process were given (a leak if it shows)


def get_version():
    return "1.0.0"


def get_inputs(meta_param_dict):
    return {
        "meta_parameters": {},
        "model_parameters": {"attack": attack.run_all("get_inputs")},
    }


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    """Keeps each user's adjustment in module state, a thread and files (work folder and
    /dev/shm), and reports in its warnings what it finds of earlier calls."""
    marker = str((adjustment or {}).get("marker", ""))
    earlier = {
        "module_state": list(SEEN),
        "threads": [t.name for t in threading.enumerate() if t.name.startswith("leak-")],
        "files": sorted(
            name
            for folder in (".", "/dev/shm")
            for name in (os.listdir(folder) if os.path.isdir(folder) else [])
            if name.startswith("leak-")
        ),
    }
    SEEN.append(marker)
    threading.Thread(target=_linger, name=f"leak-{marker}", daemon=False).start()
    for folder in (".", "/dev/shm"):
        try:
            with open(os.path.join(folder, f"leak-{marker}"), "w") as f:
                f.write(marker)
        except OSError:
            pass
    warnings = {"earlier": [str(earlier)]}
    return {"errors_warnings": {"attack": {"errors": {}, "warnings": warnings}}}


def _linger():
    import time

    time.sleep(3600)


def run_model(meta_param_dict, adjustment):
    import json

    probe = (meta_param_dict or {}).get("probe")
    if probe:  # one probe alone, with the targets the caller gives
        result = attack.PROBES[probe]({**attack.targets(), **meta_param_dict.get("targets", {})})
        return {
            "renderable": [{"media_type": "Text", "title": probe, "data": json.dumps(result)}],
            "downloadable": [],
        }
    bound = (meta_param_dict or {}).get("bound_attack")
    if bound == "many_outputs":
        return {"renderable": attack.many_outputs(), "downloadable": []}
    if bound:
        figures = attack.BOUND_ATTACKS[bound](**meta_param_dict.get("args", {}))
        text = json.dumps(figures)
        return {
            "renderable": [{"media_type": "Text", "title": bound, "data": text}],
            "downloadable": [],
        }
    report = attack.run_all("run_model", (meta_param_dict or {}).get("targets"))
    return {
        "renderable": [{"media_type": "Markdown", "title": "attack", "data": "see report"}],
        "downloadable": [{"media_type": "Text", "title": "report", "data": json.dumps(report)}],
    }
