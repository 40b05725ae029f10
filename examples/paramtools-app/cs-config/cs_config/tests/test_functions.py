import base64

from cs_kit import CoreTestFunctions

from cs_config import functions


class TestFunctions1(CoreTestFunctions):
    get_version = functions.get_version
    get_inputs = functions.get_inputs
    validate_inputs = functions.validate_inputs
    run_model = functions.run_model
    ok_adjustment = {"policy": {"tax_rate": [{"year": 2026, "value": 0.25}]}}
    bad_adjustment = {"policy": {"tax_rate": [{"year": 2026, "value": 3.0}]}}


def test_outputs_have_a_table_a_picture_and_a_csv():
    result = functions.run_model({"year": 2026, "use_full_sample": False}, {})
    media = [o["media_type"] for o in result["renderable"] + result["downloadable"]]
    assert media == ["table", "PNG", "CSV"]
    png = base64.b64decode(result["renderable"][1]["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_higher_rate_collects_more():
    low = functions.run_model({}, {"policy": {"tax_rate": [{"year": 2026, "value": 0.1}]}})
    high = functions.run_model({}, {"policy": {"tax_rate": [{"year": 2026, "value": 0.3}]}})
    assert high["downloadable"][0]["data"] != low["downloadable"][0]["data"]
    last = lambda r: float(r["downloadable"][0]["data"].splitlines()[-1].split(",")[2])  # noqa: E731
    assert last(high) > last(low)
