from cs_config.squares import layout, square


def test_square():
    assert square(7) == "7 squared is 49"


def test_the_slider_callback_sets_the_text():
    root = layout()
    slider, out = root.select_one({"name": "n"}), root.select_one({"name": "out"})
    slider.value = 9
    assert out.text == "9 squared is 81"
