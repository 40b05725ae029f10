"""The model's own tests, run at publish inside the sandbox: they attack too, and fail the
publish if any attack got anything (so a leak cannot pass unnoticed)."""

from cs_config import attack, functions


def test_get_version():
    assert functions.get_version() == "1.0.0"


def test_attacks_from_the_model_tests_get_nothing():
    report = attack.run_all("model-tests")
    assert report["ran"] == len(attack.PROBES), report
    assert attack.successes(report) == {}, report
