import shutil

from cs_config import functions


def test_install_sh_installed_tree():
    assert shutil.which("tree"), "install.sh should have installed tree"


def test_system_packages_installed_ed():
    assert shutil.which("ed"), "system_packages should have installed ed"


def test_run_model_reports_both_tools():
    (output,) = functions.run_model({}, {})["renderable"]
    assert "not installed" not in output["data"]
