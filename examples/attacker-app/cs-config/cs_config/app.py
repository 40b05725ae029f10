"""The attacker as an interactive app: a WSGI callable that gunicorn serves (model config
tech dash, app_location cs_config.app, callable_name server). Each request runs every probe
of attack.py from inside the app server's sandbox and answers the report as JSON; the query
string may name the web app's address (`?webapp=URL`), known only to the test. Probes run
at `<prefix>attack`; the prefix itself answers at once (the platform's readiness check)."""

import json
from urllib.parse import parse_qs

from cs_config.attack import run_all


def server(environ, start_response):
    if not environ.get("PATH_INFO", "").endswith("/attack"):  # the platform's readiness check
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"attacker app: GET attack to run every probe"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    extra = {"webapp": query["webapp"][0]} if "webapp" in query else {}
    extra["seen_cookie"] = environ.get("HTTP_COOKIE", "")
    extra["own_ports"] = [int(environ["SERVER_PORT"])]  # its own server, in its own namespace
    report = run_all("app_server", extra)
    report["seen_cookie"] = extra["seen_cookie"]
    body = json.dumps(report).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
