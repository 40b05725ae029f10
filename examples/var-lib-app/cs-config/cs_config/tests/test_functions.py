from pathlib import Path

from cs_config import functions


def test_the_packages_data_under_var_lib_is_readable():
    assert "update-catalog" in functions.CATALOG.read_text()


def test_the_report_is_written_into_the_working_directory():
    written = functions.write_report(Path("."))
    assert written.read_text() == functions.CATALOG.read_text()
