from cs_config.app import app, square


def test_square_callback():
    assert square(7) == "7 squared is 49"


def test_layout_has_the_slider():
    assert app.layout.children[1].id == "n"
