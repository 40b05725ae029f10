"""A headless Chromium the tests can click in: Debian's `chromium` driven over the DevTools
protocol.

Why: `chromium --dump-dom` shows a page once, after its first requests; Bokeh and Streamlit
apps render inside shadow roots or only after messages over their WebSocket, and their round
trip starts with a user's action (a slider moved, a button clicked). This drives one real
browser over its DevTools WebSocket (httpx-ws, already a platform dependency): open a page,
run a line of JavaScript in it, wait until an expression holds. Test-side only: the browser
runs as the test's user with its own scratch profile, never inside a model sandbox.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx_ws import WebSocketSession, connect_ws

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")

# Every text node of the page, shadow roots included (Bokeh renders its widgets in them).
DEEP_TEXT = """(() => {
  const out = [], skip = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT']);
  const walk = (n) => {
    if (skip.has(n.nodeName)) return;
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) c.nodeType === 3 ? out.push(c.textContent) : walk(c);
  };
  walk(document);
  return out.join(' ').replace(/\\s+/g, ' ');
})()"""


class BrowserError(RuntimeError):
    pass


class Page:
    """One tab, attached through the browser's DevTools session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser, self.session_id = browser, session_id

    def evaluate(self, expression: str) -> Any:
        """The expression's value (promises awaited); a page exception raises BrowserError."""
        result = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session_id=self.session_id,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression: str, seconds: float = 60) -> Any:
        """The expression's value once truthy, evaluated again until then (an action that
        returns true once it could act: a button that has rendered, say)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.2)
        raise BrowserError(f"{expression[:80]!r} was not true within {seconds:g} s")

    def text(self) -> str:
        return self.evaluate(DEEP_TEXT) or ""

    def wait_for_text(self, wanted: str, seconds: float = 60) -> str:
        """The page's text once it holds `wanted`; BrowserError with the last text if never."""
        deadline = time.monotonic() + seconds
        text = ""
        while time.monotonic() < deadline:
            try:
                text = self.text()
            except BrowserError:
                text = ""  # navigating
            if wanted in text:
                return text
            time.sleep(0.2)
        raise BrowserError(f"{wanted!r} did not appear within {seconds:g} s; the page: {text!r}")


class Browser:
    """The DevTools connection: commands by id, events skipped."""

    def __init__(self, ws: WebSocketSession) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    def call(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        message: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self.ws.send_text(json.dumps(message))
        while True:
            answer = json.loads(self.ws.receive_text(timeout=60))
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, attached["sessionId"])


@contextmanager
def chromium(
    profile: Path, resolve: dict[str, str] | None = None, seconds: float = 60
) -> Iterator[Browser]:
    """A headless Debian Chromium with a scratch profile, stopped (by its pid) at the end;
    `resolve` maps host names to addresses (a public name for a server on loopback)."""
    rules = ", ".join(f"MAP {name} {address}" for name, address in (resolve or {}).items())
    argv = [
        shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", *([f"--host-resolver-rules={rules}"] if rules else []),
        "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = devtools_url(proc, seconds)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let it block
        with httpx.Client() as client, connect_ws(url, client) as ws:
            yield Browser(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def devtools_url(proc: subprocess.Popen, seconds: float) -> str:
    """The browser's DevTools WebSocket, from the line it prints once it listens."""
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if found := LISTENING.search(line):
            return found.group(1).replace("ws://", "http://", 1)
    raise BrowserError(f"chromium did not open its DevTools port: {''.join(seen)[-2000:]}")
