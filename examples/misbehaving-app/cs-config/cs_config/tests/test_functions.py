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


class TestPdfBytes(TestFunctions1):
    """cs-kit's own checks (cs_storage's schema and writer) accept raw bytes and base64 text."""

    ok_adjustment = {"control": {"behavior": [{"value": "pdf_bytes"}]}}


class TestEmptyTitle(TestFunctions1):
    """cs-kit's own checks accept an empty title."""

    ok_adjustment = {"control": {"behavior": [{"value": "empty_title"}]}}


def test_raise_on_request():
    with pytest.raises(ValueError, match="on purpose"):
        functions.run_model({}, {"control": {"behavior": [{"value": "raise"}]}})
