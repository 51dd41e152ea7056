"""Headless Chromium for UI tests: Debian's chromium-headless-shell (or chromium), installed with apt-get when it is
missing and we are root (as tests/cluster/slurm_up.sh installs SLURM); the test is skipped otherwise.

    shot = Browser.find_or_install()
    shot.screenshot(url, Path("page.png"))    # after the page's scripts ran (virtual time budget)
    shot.dom(url)                             # the DOM the scripts built

    with shot.page() as page:                 # a tab driven as a user would, over the DevTools protocol
        page.goto(url)
        page.type("#prompt", "def add(a, b):")          # keyboard text into the element
        page.click("#complete")                          # a real mouse click at the element's centre
        page.wait_for("document.title.length > 0")      # a JS expression, polled until true
        page.screenshot(Path("after.png"))

The tab speaks the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages ending in NUL on file
descriptors 3 and 4), so no websocket client or browser-automation package is needed. Not a test module.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PACKAGE = "chromium-headless-shell"
TIMEOUT_S = 180
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
         "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--window-size=2400,1000",
         "--virtual-time-budget=30000")


@dataclass(frozen=True)
class Browser:
    binary: str

    @classmethod
    def find_or_install(cls) -> Browser:
        found = shutil.which(PACKAGE) or shutil.which("chromium")
        if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
                       PACKAGE]
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
            if done.returncode != 0:  # a machine whose package lists were never fetched
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600, check=False)
                subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
            found = shutil.which(PACKAGE)
        if found is None:
            pytest.skip(f"no headless Chromium ({PACKAGE}) and not root to install it")
        return cls(found)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.binary, *FLAGS, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        assert done.returncode == 0, f"{self.binary} failed ({done.returncode}): {done.stderr[-2000:]}"
        return done

    def screenshot(self, url: str, png: Path) -> Path:
        self._run(f"--screenshot={png}", url)
        return png

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).stdout

    @contextmanager
    def page(self, width: int = 1100, height: int = 760) -> Iterator[Page]:
        """A tab of this browser, closed (and the browser with it) on leaving."""
        to_browser, from_browser = os.pipe(), os.pipe()

        def wire() -> None:  # in the child, before exec: commands arrive on fd 3, answers leave on fd 4
            commands, answers = os.dup(to_browser[0]), os.dup(from_browser[1])
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        flags = [f for f in FLAGS if not f.startswith(("--window-size", "--virtual-time-budget"))]
        process = subprocess.Popen([self.binary, *flags, f"--window-size={width},{height}", "--remote-debugging-pipe",
                                    "about:blank"], preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        os.close(to_browser[0])
        os.close(from_browser[1])
        page = Page(process, to_browser[1], from_browser[0])
        try:
            page.attach(width, height)
            yield page
        finally:
            page.close()


class Page:
    """One tab, over the DevTools protocol (see the module docstring)."""

    def __init__(self, process: subprocess.Popen[bytes], commands: int, answers: int) -> None:
        self.process, self.commands, self.answers = process, commands, answers
        self.ids = itertools.count(1)
        self.buffer = b""
        self.session: str | None = None

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one command; its result (events that arrive meanwhile are dropped)."""
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.answers], [], [], max(left, 0))
                assert ready, f"{method}: no answer from the browser within {timeout} s"
                chunk = os.read(self.answers, 1 << 20)
                assert chunk, f"{method}: the browser closed its end (exit {self.process.poll()})"
                self.buffer += chunk
            raw, _, self.buffer = self.buffer.partition(b"\0")
            answer = json.loads(raw)
            if answer.get("id") == message_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return dict(answer.get("result", {}))

    def attach(self, width: int, height: int) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({expression})"):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout=60)

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type `text` into it (as keyboard input: the page's input events fire)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A left click at the centre of the element, pressed and released."""
        x, y = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                             ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, png: Path) -> Path:
        png.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return png

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):  # already gone
            pass
        finally:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self.commands)
            os.close(self.answers)
