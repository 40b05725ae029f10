"""A model that needs Debian packages: `tree` from its install.sh, and whatever its model
config lists under `system_packages` (the examples config lists `ed`)."""

import shutil
import subprocess


def get_version():
    return "1.0.0"


def get_inputs(meta_param_dict):
    return {"meta_parameters": {}, "model_parameters": {"tools": {}}}


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    return {"errors_warnings": errors_warnings}


def tool_version(name):
    """The first line of `<tool> --version`, or why there is none."""
    path = shutil.which(name)
    if path is None:
        return f"{name}: not installed"
    run = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return (run.stdout or run.stderr).splitlines()[0]


def run_model(meta_param_dict, adjustment):
    text = "\n".join(tool_version(name) for name in ("tree", "ed"))
    return {
        "renderable": [{"media_type": "Text", "title": "tools", "data": text}],
        "downloadable": [],
    }
