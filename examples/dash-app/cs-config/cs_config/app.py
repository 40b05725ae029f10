"""A tiny Dash app: a slider and the callback that squares its value (C/S's data-viz guide)."""

import os

from dash import Dash, Input, Output, dcc, html

# C/S sets URL_BASE_PATHNAME to /{owner}/{title}/{deployment_name}/ when it runs the app.
app = Dash(__name__, url_base_pathname=os.environ.get("URL_BASE_PATHNAME", "/"))
app.title = "Dash sample app"
server = app.server  # what gunicorn serves (callable_name)

app.layout = html.Div(
    [
        html.H1("Squares"),
        dcc.Slider(id="n", min=1, max=10, step=1, value=7),
        html.Div(id="out"),
    ]
)


@app.callback(Output("out", "children"), Input("n", "value"))
def square(n: int) -> str:
    return f"{n} squared is {n * n}"
