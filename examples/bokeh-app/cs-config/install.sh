# A Bokeh app as Compute Studio served it: `bokeh serve app.py --prefix … --allow-websocket-origin …`
# (model config: tech bokeh, app_location app.py, a path in cs-config/).
pip install "bokeh==3.9.2"
