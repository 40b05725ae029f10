"""The Bokeh sample app's document: a heading, a slider `n` and a Div `out` its callback sets."""

from bokeh.layouts import column
from bokeh.models import Div, Slider


def square(n: int) -> str:
    return f"{n} squared is {n * n}"


def layout() -> column:
    slider = Slider(name="n", title="n", start=1, end=10, step=1, value=7)
    out = Div(name="out", text=square(slider.value))

    def changed(attr: str, old: int, new: int) -> None:
        out.text = square(int(new))

    slider.on_change("value", changed)
    return column(Div(text="<h1>Squares</h1>"), slider, out, name="root")
