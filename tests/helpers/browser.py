"""A page opened from disk in headless Chromium, driven over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: NUL-terminated JSON on file descriptors 3 and 4; no websocket client,
no browser download). ``load_page`` returns what a test checks: every image's natural size, the text
of the page's table rows, console errors and failed loads, and a full-page PNG screenshot."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class Page:
    images: list[dict]  # src, naturalWidth, naturalHeight, complete
    tables: dict[str, list[list[str]]]  # CSS class of a table (or "table-N") -> its body rows' cell texts
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    screenshot: bytes = b""
    title: str = ""


class _Pipe:
    def __init__(self, binary: str, profile: str):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            high = os.dup(to_browser), os.dup(from_browser)  # neither may be 3 or 4 while those are set
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run", "--mute-audio",
             "--window-size=1400,1000", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive(deadline))

    def _receive(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("no reply from the browser")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._write, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


_COLLECT = """(() => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), naturalWidth: i.naturalWidth,
                                                 naturalHeight: i.naturalHeight, complete: i.complete}));
  const tables = {};
  [...document.querySelectorAll('table')].forEach((t, n) => {
    const key = t.className || ('table-' + n);
    const rows = [...t.tBodies].flatMap(b => [...b.rows]).map(r => [...r.cells].map(c => c.innerText.trim()));
    tables[key] = (tables[key] || []).concat(rows);
    const part = t.closest('section');  // a report section's tables also under "section:<its id>"
    if (key === 'section' && part) tables['section:' + part.id] = (tables['section:' + part.id] || []).concat(rows);
  });
  return JSON.stringify({images, tables, title: document.title});
})()"""


def load_page(path: Path, binary: str, timeout: float = 90) -> Page:
    """Open ``path`` (a local file) and return what it shows once its load event has fired."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            session = pipe.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            found = json.loads(pipe.send("Runtime.evaluate", {"expression": _COLLECT, "returnByValue": True},
                                         session=session)["result"]["value"])
            metrics = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = pipe.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1400, "height": min(metrics["height"], 6000), "scale": 1}},
                session=session, timeout=timeout)
            errors = _errors(pipe.events)
        finally:
            pipe.close()
    return Page(found["images"], found["tables"], errors, base64.b64decode(shot["data"]), found["title"])


def _errors(events: list[dict]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
    return out
