from pathlib import Path

from cs_config.squares import square
from streamlit.testing.v1 import AppTest

APP = Path(__file__).parents[2] / "app.py"


def test_square():
    assert square(7) == "7 squared is 49"


def test_the_button_adds_one():
    app = AppTest.from_file(str(APP)).run()
    assert app.markdown[0].value == "7 squared is 49"
    app.button[0].click().run()
    assert app.markdown[0].value == "8 squared is 64"
