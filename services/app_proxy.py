"""The front door of interactive model apps: `/{owner}/{title}/{deployment_name}/…`.

Why: every Dash, Bokeh or Streamlit server runs sandboxed behind a unix socket only the
platform opens (runtime/app_server.py); users reach it only through this reverse proxy,
which the platform owns. It

- opens a deployment only for a browser holding its cookie, set from a signed link the web
  app hands its user (services/app_links.py); anything else is 403 before the model sees it;
- forwards HTTP and WebSockets with fastapi-proxy-lib (httpx + httpx-ws, on the Starlette and
  httpx this project already pins) instead of a hand-written proxy: it handles hop-by-hop
  headers, streaming bodies, WebSocket subprotocols and close codes, and talks to each server
  over its unix socket through an httpx transport. Caddy (Debian has 2.6) would proxy as well,
  but every route, the cookie check, the restart page and the idle clock would live in its
  JSON config and a forward-auth call back into Python on each request; here they are one
  process with the servers it routes to;
- strips the platform's cookie and link from what it forwards, so a model never sees them;
- answers a stopped deployment with a page that restarts it (the `app-start` flow), and
  stops idle ones (the `app-stop` flow: services/app_host.py says when); every request and
  every WebSocket message, either way, counts as use.

The control socket (`$CS_HOME/apps/control.sock`, folder 0700) is how the `app-start` and
`app-stop` flows ask for a start or a stop; it is never on the network.
Run: `python -m prefect_cs.services.app_proxy` (the stack starts it).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
import httpx
import uvicorn
from fastapi_proxy_lib.core.http import ReverseHttpProxy
from fastapi_proxy_lib.core.websocket import ReverseWebSocketProxy
from prefect_cs.core.errors import CSError, NotFound
from prefect_cs.core.home import private_folder
from prefect_cs.core.names import NAME_RE
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.app_server import url_prefix
from prefect_cs.services import app_links
from prefect_cs.services.app_host import AppHost, Deployment, Key, Refused
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

logger = logging.getLogger("prefect_cs.apps")
APP_PATH = "/{owner}/{title}/{name}/{path:path}"
RESTART = "_cs/restart"  # under the app's own path, where its cookie is sent


def deployment_key(params: dict[str, Any]) -> Key | None:
    parts = (params["owner"], params["title"], params["name"])
    return parts if all(NAME_RE.fullmatch(p) for p in parts) else None  # type: ignore[return-value]


class Proxies:
    """One httpx client (and its two fastapi-proxy-lib proxies) per running server's socket."""

    def __init__(self) -> None:
        self.by_socket: dict[str, tuple[ReverseHttpProxy, ReverseWebSocketProxy]] = {}

    def of(self, deployment: Deployment) -> tuple[ReverseHttpProxy, ReverseWebSocketProxy]:
        sock = str(deployment.server.socket_path)  # type: ignore[union-attr]
        if sock not in self.by_socket:
            transport = httpx.AsyncHTTPTransport(uds=sock)
            client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60, connect=5))
            http = ReverseHttpProxy(client, base_url="http://app/")
            ws = ReverseWebSocketProxy(client, base_url="http://app/")
            self.by_socket[sock] = (http, ws)
        return self.by_socket[sock]

    async def forget_except(self, live: set[str]) -> None:
        for sock in [s for s in self.by_socket if s not in live]:
            http, _ = self.by_socket.pop(sock)
            await http.client.aclose()


def forwarded_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The request as the app gets it: without the platform's cookie and signed link."""
    headers = []
    for name, value in scope["headers"]:
        if name == b"cookie":
            value = app_links.without_platform_cookie(value.decode("latin-1")).encode("latin-1")
            if not value:
                continue
        headers.append((name, value))
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    kept = urlencode([(k, v) for k, v in query if k != app_links.LINK_PARAM])
    return {**scope, "headers": headers, "query_string": kept.encode("latin-1")}


def page(title: str, body: str, status: int) -> HTMLResponse:
    text = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
    return HTMLResponse(text + body, status)


def forbidden() -> HTMLResponse:
    """403 from the front door itself (its header tells it from a refusal of the app's)."""
    answer = page(
        "No access to this app",
        "<p>Open it from the web app: its link gives your browser access to this deployment.</p>",
        403,
    )
    answer.headers["x-cs-front-door"] = "refused"
    return answer


def stopped_page(prefix: str) -> HTMLResponse:
    """A stopped deployment's page: it asks for a restart at once (a button without JS)."""
    action = html.escape(prefix + RESTART)
    body = (
        "<p>This app was stopped after a while without use. Restarting it…</p>"
        f'<form method="post" action="{action}"><button>Restart</button></form>'
        f"<script>fetch({action!r},{{method:'POST'}}).then(()=>location.reload())</script>"
    )
    return page("This app is starting again", body, 503)


class FrontDoor:
    def __init__(self, host: AppHost) -> None:
        self.host, self.proxies = host, Proxies()

    def routes(self) -> list:
        return [
            Route("/_cs/health", self.health),
            Route(APP_PATH, self.http, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            WebSocketRoute(APP_PATH, self.websocket),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "running": len(self.host.running)})

    async def http(self, request: Request) -> Response:
        key = deployment_key(request.path_params)
        if key is None:
            return page("Not found", "", 404)
        prefix = url_prefix(*key)
        link = request.query_params.get(app_links.LINK_PARAM)
        if link is not None:
            return self.enter(request, prefix, link)
        if not app_links.cookie_valid(prefix, request.headers.get("cookie", "")):
            return forbidden()
        if request.path_params["path"] == RESTART and request.method == "POST":
            return await self.restart(key, prefix)
        deployment = self.host.get(key)
        if deployment is None or not deployment.ready:
            if deployment is None and key not in self.host.stopped:
                return page("No such app deployment", "<p>Start it from the web app.</p>", 404)
            return stopped_page(prefix)
        self.host.touch(key)
        http, _ = self.proxies.of(deployment)
        forwarded = Request(forwarded_scope(request.scope), request.receive)
        return await http.proxy(request=forwarded, path=request.url.path.lstrip("/"))

    def enter(self, request: Request, prefix: str, link: str) -> Response:
        """A signed link: its cookie, then the same URL without the link."""
        if not app_links.link_valid(prefix, link):
            return page("This link has expired or is not valid", "<p>Open the app again.</p>", 403)
        query = forwarded_scope(request.scope)["query_string"].decode("latin-1")
        target = request.url.path + (f"?{query}" if query else "")
        answer = RedirectResponse(target, 303)
        answer.headers.append("set-cookie", app_links.set_cookie_header(prefix))
        return answer

    async def restart(self, key: Key, prefix: str) -> Response:
        from prefect_cs.flows.interactive import AppRefused, app_start

        if self.host.get(key) is None:
            tag = self.host.stopped.get(key)
            try:
                await anyio.to_thread.run_sync(lambda: app_start(*key, tag=tag, why="restart page"))
            except AppRefused as exc:
                if exc.status != 400:  # 400: already running (another tab restarted it)
                    return page("The app could not start", f"<p>{html.escape(exc.detail)}</p>", 503)
        return RedirectResponse(prefix, 303)

    async def websocket(self, websocket: WebSocket) -> None:
        key = deployment_key(websocket.path_params)
        prefix = url_prefix(*key) if key else ""
        cookie = websocket.headers.get("cookie", "")
        deployment = self.host.get(key) if key else None
        if key is None or not app_links.cookie_valid(prefix, cookie):
            await websocket.send_denial_response(forbidden())  # the upgrade answered 403
            return
        if deployment is None or not deployment.ready:
            await websocket.close(code=4404)
            return
        self.host.touch(key)
        _, ws = self.proxies.of(deployment)
        receive, send = touching(self.host, key, websocket.receive, websocket.send)
        forwarded = WebSocket(forwarded_scope(websocket.scope), receive, send)
        await ws.proxy(websocket=forwarded, path=websocket.url.path.lstrip("/"))


def touching(host: AppHost, key: Key, receive: Any, send: Any) -> tuple[Any, Any]:
    """A WebSocket's receive and send that count each message, either way, as use: an open
    Bokeh or Streamlit page talks only over its WebSocket, never over HTTP, while in use."""

    async def receive_touching() -> Any:
        message = await receive()
        host.touch(key)
        return message

    async def send_touching(message: Any) -> None:
        host.touch(key)
        await send(message)

    return receive_touching, send_touching


class Control:
    """The flows' side door (a unix socket): start, stop, list, stats."""

    def __init__(self, host: AppHost) -> None:
        self.host = host

    def routes(self) -> list:
        return [
            Route("/start", self.start, methods=["POST"]),
            Route("/stop", self.stop, methods=["POST"]),
            Route("/list", self.listing),
            Route("/stats/{owner}/{title}/{name}/", self.stats),
        ]

    async def start(self, request: Request) -> Response:
        body = await request.json()
        key = (body["owner"], body["title"], body["deployment_name"])
        return await self.answer(self.host.start, key, body.get("tag"), status=201)

    async def stop(self, request: Request) -> Response:
        body = await request.json()
        key = (body["owner"], body["title"], body["deployment_name"])
        logger.info("stopping %s (%s)", "/".join(key), body.get("why", "asked"))
        return await self.answer(self.host.stop, key)

    async def listing(self, request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(self.host.listing))

    async def stats(self, request: Request) -> Response:
        key = deployment_key(request.path_params)
        if key is None:
            return JSONResponse({"detail": "invalid deployment"}, 400)
        ping = request.query_params.get("ping") == "1"
        return JSONResponse(self.host.stats(key, ping))

    async def answer(self, call, *args: Any, status: int = 200) -> Response:
        try:
            return JSONResponse(await anyio.to_thread.run_sync(call, *args), status)
        except Refused as exc:
            return JSONResponse({"detail": exc.detail}, exc.status)
        except NotFound as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        except (CSError, LookupError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, 400)


async def reap_idle(host: AppHost, proxies: Proxies) -> None:
    """Stop idle deployments through the `app-stop` flow; forget their clients."""
    from prefect_cs.flows.interactive import app_stop

    every = min(30.0, max(0.5, get_settings().apps.idle_seconds / 4))
    while True:
        await asyncio.sleep(every)
        for key in host.idle():
            try:
                await anyio.to_thread.run_sync(lambda k=key: app_stop(*k, why="idle"))
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                logger.warning("idle %s not stopped: %s", "/".join(key), exc)
        live = {str(d.server.socket_path) for d in list(host.running.values()) if d.server}
        await proxies.forget_except(live)


def control_path() -> Path:
    home = get_settings().home
    return private_folder(home / "apps", home) / "control.sock"


async def serve(host_name: str, port: int) -> None:
    host = AppHost()
    door = FrontDoor(host)
    control = control_path()
    control.unlink(missing_ok=True)
    public = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=door.routes()), host=host_name, port=port, log_level="warning"
        )
    )
    side = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=Control(host).routes()), uds=str(control), log_level="warning"
        )
    )
    reaper = asyncio.create_task(reap_idle(host, door.proxies))
    try:
        await asyncio.gather(public.serve(), side.serve())
    finally:
        reaper.cancel()
        await anyio.to_thread.run_sync(host.stop_all)
        control.unlink(missing_ok=True)


def main() -> None:
    apps = get_settings().apps
    os.umask(0o077)
    asyncio.run(serve(apps.host, apps.port))


if __name__ == "__main__":
    main()
