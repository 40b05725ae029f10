"""A tiny Bokeh server app: a slider whose Python callback (run by the server, reached over
the app's WebSocket) writes its square below it."""

from bokeh.io import curdoc
from cs_config.squares import layout

curdoc().add_root(layout())
curdoc().title = "Bokeh sample app"
