import pytest
from cs_kit import CoreTestFunctions

from cs_config import functions


class TestFunctions1(CoreTestFunctions):
    get_version = functions.get_version
    get_inputs = functions.get_inputs
    validate_inputs = functions.validate_inputs
    run_model = functions.run_model
    ok_adjustment = {"control": {"behavior": [{"value": "ok"}]}}
    bad_adjustment = {"control": {"behavior": [{"value": "explode-the-sun"}]}}


def test_raise_on_request():
    with pytest.raises(ValueError, match="on purpose"):
        functions.run_model({}, {"control": {"behavior": [{"value": "raise"}]}})
