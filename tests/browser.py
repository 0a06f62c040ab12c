"""Debian's headless Chromium, driven over the DevTools protocol, for checks of pages as a person
sees them: open a URL, run a script in the page, read its rendered text, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .processes import free_port, stop_process_group, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A headless Chromium on a machine without network: no background connections, no GPU.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Browser:
    """One headless Chromium with one page; a context manager that stops it by its PID."""

    def __init__(self, profile: Path, size: str = "1700,1000") -> None:
        assert CHROMIUM is not None, "no chromium on PATH"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--window-size={size}", f"--remote-debugging-port={self.port}"]
            + [f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._ws: Any = None

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        try:
            page = wait_until(self._page_target, 60, "Chromium's DevTools endpoint", interval=0.5)
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
            self.call("Page.enable")
        except BaseException:
            stop_process_group(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
        stop_process_group(self.proc)

    def _page_target(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=5) as reply:
                targets = json.loads(reply.read())
        except OSError:
            return None
        return next((t for t in targets if t.get("type") == "page"), None)

    def call(self, method: str, **params: Any) -> dict:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        request = next(self._ids)
        self._ws.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == request:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_until(lambda: self.evaluate("document.readyState") == "complete", 60, f"{url} to load", interval=0.5)

    def reload(self) -> None:
        self.call("Page.reload")
        wait_until(lambda: self.evaluate("document.readyState") == "complete", 60, "the page to reload", interval=0.5)

    def text(self) -> list[str]:
        """The page's text nodes as rendered now (scripts ran, API answers arrived)."""
        html = self.evaluate("document.body ? document.body.outerHTML : ''") or ""
        return [t.strip() for t in re.split(r"<[^>]+>", html) if t.strip()]

    def wait_for_text(self, ready: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        """The page's text once ``ready(text)`` holds."""
        return wait_until(lambda: (lambda t: t if ready(t) else None)(self.text()), timeout, what, interval=1.0)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path
