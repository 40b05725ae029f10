# A Dash app as Compute Studio served it: gunicorn runs cs_config.app:server (model config:
# tech dash, app_location cs_config.app, callable_name server).
pip install "dash==4.4.1" "gunicorn==23.0.0"
