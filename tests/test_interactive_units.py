"""The interactive apps' guards one by one, without servers: links, cookies, what the app is
forwarded, the caps, the model config's rules and C/S's server commands."""

from __future__ import annotations

import pytest
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.runtime.app_server import server_args
from prefect_cs.services import app_links
from prefect_cs.services.app_host import AppHost, Refused
from prefect_cs.services.app_proxy import forwarded_scope

ALICE, BOB = "/o/t/alice-1/", "/o/t/bob-1/"


def test_a_link_opens_only_its_deployment_and_only_until_it_expires():
    value = app_links.access_query(ALICE).split("=", 1)[1]
    assert app_links.link_valid(ALICE, value)
    assert not app_links.link_valid(BOB, value)
    expired = app_links.access_query(ALICE, now=1000).split("=", 1)[1]
    assert not app_links.link_valid(ALICE, expired)
    expires, signature = value.split(".")
    assert not app_links.link_valid(ALICE, f"{int(expires) + 1}.{signature}")  # signed expiry
    assert not app_links.link_valid(ALICE, f"{expires}.{signature[:-1]}")


def test_a_cookie_opens_only_its_deployment():
    alice = app_links.set_cookie_header(ALICE).split(";")[0]
    assert app_links.cookie_valid(ALICE, f"x=1; {alice}")
    assert not app_links.cookie_valid(BOB, alice)
    assert not app_links.cookie_valid(ALICE, "cs_app=" + "0" * 64)
    assert "Path=/o/t/alice-1/" in app_links.set_cookie_header(ALICE)
    assert "HttpOnly" in app_links.set_cookie_header(ALICE)


def test_the_app_never_gets_the_platforms_cookie_or_link():
    scope = {
        "type": "http",
        "headers": [(b"cookie", b"cs_app=secret; theirs=1"), (b"host", b"door")],
        "query_string": b"cs_access=1.abc&q=2",
    }
    forwarded = forwarded_scope(scope)
    assert (b"cookie", b"theirs=1") in forwarded["headers"]
    assert b"secret" not in b"".join(v for _, v in forwarded["headers"])
    assert forwarded["query_string"] == b"q=2"


def test_running_deployments_are_capped_per_model_and_per_pool(monkeypatch):
    monkeypatch.setenv("CS_APPS_MAX_PER_MODEL", "2")
    monkeypatch.setenv("CS_APPS_MAX_RUNNING", "3")
    host = AppHost()
    host._reserve(("o", "a", "d1"), "v1")
    host._reserve(("o", "a", "d2"), "v1")
    with pytest.raises(Refused) as per_model:
        host._reserve(("o", "a", "d3"), "v1")
    assert per_model.value.status == 429 and "CS_APPS_MAX_PER_MODEL" in per_model.value.detail
    host._reserve(("o", "b", "d1"), "v1")
    with pytest.raises(Refused) as per_pool:
        host._reserve(("o", "c", "d1"), "v1")
    assert per_pool.value.status == 429 and "CS_APPS_MAX_RUNNING" in per_pool.value.detail
    with pytest.raises(Refused) as twice:
        host._reserve(("o", "b", "d1"), "v1")
    assert twice.value.status == 400


def test_the_model_config_takes_cs_tech_fields_and_refuses_unsafe_ones():
    base = {"owner": "o", "title": "t", "repo_url": "https://github.com/o/t"}
    assert ModelConfig(**base).tech == "cs-config"
    ModelConfig(**base, tech="dash", app_location="cs_config.app", callable_name="server")
    for bad in (
        {"tech": "dash"},  # no callable
        {"tech": "bokeh"},  # no script
        {"tech": "bokeh", "app_location": "../../etc/passwd"},
        {"tech": "bokeh", "app_location": "/etc/passwd"},
        {"tech": "dash", "callable_name": "server; rm -rf /"},
        {"tech": "shiny", "app_location": "app.R"},
    ):
        with pytest.raises(ValueError):
            ModelConfig(**base, **bad)


def test_servers_start_with_cs_commands_on_their_own_loopback():
    common = {"prefix": "/o/t/d/", "cpu": 1.5, "origin": "viz.example:443"}
    dash = server_args("dash", app_location=None, callable_name="server", **common)
    assert dash == [
        "gunicorn", "--workers", "3", "--bind", "127.0.0.1:8010", "cs_config.functions:server"
    ]  # fmt: skip
    bokeh = server_args("bokeh", app_location="app.py", callable_name=None, **common)
    assert bokeh[:3] == ["bokeh", "serve", "app.py"]
    assert "--prefix" in bokeh and "--allow-websocket-origin=viz.example:443" in bokeh
    streamlit = server_args("streamlit", app_location="app.py", callable_name=None, **common)
    assert streamlit[:3] == ["streamlit", "run", "app.py"]
    assert streamlit[streamlit.index("--server.baseUrlPath") + 1] == "/o/t/d/"
    # the front door rewrites Host: the origin browsers send must be allowed by name
    assert streamlit[streamlit.index("--browser.serverAddress") + 1] == "viz.example"
    assert "http://viz.example:443" in streamlit
