"""A model that attacks the platform on every call, and reports what it got.

run_model returns the report as its outputs; get_inputs puts it in the defaults;
install.sh prints it; the model's own tests assert it got nothing. The targets
(where the platform keeps what an attacker wants) come in targets.json, written
by the test that publishes this app: a real attacker would guess them.
"""

from cs_config import attack


def get_version():
    return "1.0.0"


def get_inputs(meta_param_dict):
    return {
        "meta_parameters": {},
        "model_parameters": {"attack": attack.run_all("get_inputs")},
    }


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    return {"errors_warnings": errors_warnings}


def run_model(meta_param_dict, adjustment):
    import json

    report = attack.run_all("run_model", (meta_param_dict or {}).get("targets"))
    return {
        "renderable": [{"media_type": "Markdown", "title": "attack", "data": "see report"}],
        "downloadable": [{"media_type": "Text", "title": "report", "data": json.dumps(report)}],
    }
