"""The leaderboard in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is the Debian ``chromium`` package. When it is missing, the session fixture installs it
with ``apt-get install -y chromium`` if it may (root or passwordless sudo, apt present, and
``BENCH_NO_BROWSER_INSTALL`` unset); otherwise every test here is skipped with the reason. The
protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON),
so no websocket library, no browser download and no network port are needed.

Checks: pages load with no console error, exception, failed load or CSP violation; clicking a
column header sorts the table; a unit link opens the unit's page; labels carrying ``<script>``
and ``<img onerror=...>`` payloads are shown as text and never run (they would set
``window.__xss``, change the title or open an alert dialog).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leaderboard.build import build
from tests.leaderboard.test_leaderboard import IMG_LABEL, SCRIPT_LABEL, SCRIPT_TRACE, write_results

TIMEOUT = 20.0


def _can_install() -> str | None:
    """``None`` when apt may install here, else why not."""
    if os.environ.get("BENCH_NO_BROWSER_INSTALL"):
        return "BENCH_NO_BROWSER_INSTALL is set"
    if not shutil.which("apt-get"):
        return "apt-get is not available (not a Debian-like system)"
    if os.geteuid() == 0:
        return None
    if shutil.which("sudo"):
        ok = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode
        if ok == 0:
            return None
    return "not root and no passwordless sudo"


def _install_chromium() -> str:
    """Install the Debian package; returns a message when it did not work."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*sudo, "apt-get", "install", "-y", "-q", "chromium"]
    print(f"\ninstalling the browser for the leaderboard tests: {' '.join(cmd)}", file=sys.stderr)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a stale package list: refresh once and retry
        subprocess.run(
            [*sudo, "apt-get", "update", "-q"], capture_output=True, env=env, timeout=300
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    print(f"apt-get finished in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if proc.returncode != 0:
        return f"apt-get install chromium failed: {(proc.stderr or proc.stdout)[-300:]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = _can_install()
    if why is not None:
        pytest.skip(
            f"headless Chromium is not installed and cannot be installed here ({why}); "
            "install the Debian package 'chromium' to run the browser tests"
        )
    problem = _install_chromium()
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"headless Chromium could not be installed: {problem or 'not on PATH'}")
    return found


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Keep the child's ends above 10 so dup2 onto 3 and 4 cannot clobber them.
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire() -> None:  # in the child: its pipe ends become fds 3 and 4, inherited by exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire,  # the test process is single-threaded here
        )
        os.close(child_in)
        os.close(child_out)
        self._w = to_chrome_w
        self._r = from_chrome_r
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session = self._attach()
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    # -- protocol --
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium over the DevTools pipe")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _call(self, method: str, params: dict[str, Any] | None, session: str | None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, msg: dict[str, Any]) -> None:
        if "method" not in msg:
            return
        self.events.append(msg)
        if msg["method"] == "Page.javascriptDialogOpening":  # an alert() ran: note it, dismiss it
            os.write(
                self._w,
                json.dumps(
                    {
                        "id": 10**9 + len(self.events),
                        "method": "Page.handleJavaScriptDialog",
                        "params": {"accept": True},
                        "sessionId": msg.get("sessionId"),
                    }
                ).encode()
                + b"\0",
            )

    def _attach(self) -> str:
        targets = self._call("Target.getTargets", None, None)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        return self._call(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, None
        )["sessionId"]

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self._call(method, params, self.session)

    def wait_for(self, method: str, since: int) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for e in self.events[since:]:
                if e["method"] == method:
                    return e
            self._event(self._read_message(deadline))

    # -- page helpers --
    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        mark = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired", mark)

    def click_and_wait_load(self, expression: str) -> None:
        mark = len(self.events)
        self.eval(f"({expression}).click()")
        self.wait_for("Page.loadEventFired", mark)

    def problems(self, since: int = 0) -> list[str]:
        """Console errors, uncaught exceptions, failed loads, CSP violations, dialogs."""
        out = []
        for e in self.events[since:]:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def close(self) -> None:
        try:
            self._call("Browser.close", None, None)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaderboard-browser")
    paths = write_results(root / "results")
    return build(paths, root / "site").parent


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def _rows(browser: Browser, table: str) -> list[str]:
    return browser.eval(
        f"Array.from(document.querySelector({json.dumps(table)}).tBodies[0].rows)"
        ".map(r => r.getAttribute('data-method'))"
    )


def test_index_loads_without_errors_and_payloads_stay_text(browser: Browser, site: Path) -> None:
    mark = len(browser.events)
    browser.goto((site / "index.html").as_uri())
    assert browser.problems(mark) == []
    assert browser.eval("document.title") == "neuron-bench leaderboard"
    assert browser.eval("typeof window.__xss") == "undefined"
    text = browser.eval("document.body.innerText")
    for raw in (SCRIPT_LABEL, IMG_LABEL, SCRIPT_TRACE):
        assert raw in text
    assert browser.eval("document.querySelectorAll('script').length") == 2
    assert browser.eval("document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0


def test_clicking_a_header_sorts_the_table(browser: Browser, site: Path) -> None:
    browser.goto((site / "index.html").as_uri())
    table = "section[data-suite=milannotations] table.results"
    header = f"document.querySelector({json.dumps(table)}).tHead.rows[0].cells"
    assert _rows(browser, table) == ["milan", "depictions", "netdissect"]
    mark = len(browser.events)
    browser.eval(f"{header}[1].click()")  # s / unit: numbers sort descending first
    assert _rows(browser, table) == ["milan", "netdissect", "depictions"]
    assert browser.eval(f"{header}[1].getAttribute('aria-sort')") == "descending"
    browser.eval(f"{header}[1].click()")
    assert _rows(browser, table) == ["depictions", "netdissect", "milan"]
    browser.eval(f"{header}[0].click()")  # method names: alphabetical
    assert _rows(browser, table) == ["depictions", "milan", "netdissect"]
    browser.eval(f"{header}[3].click()")  # bertscore, best first (after units labelled)
    assert _rows(browser, table) == ["milan", "depictions", "netdissect"]
    browser.eval(f"{header}[5].click()")  # sentence-cosine
    assert _rows(browser, table) == ["milan", "netdissect", "depictions"]
    browser.eval(f"{header}[4].click()")  # the unavailable column keeps the order
    assert _rows(browser, table) == ["milan", "netdissect", "depictions"]
    # The ceiling row stays apart, after the methods.
    assert browser.eval(
        f"document.querySelector({json.dumps(table)}).tBodies[1].rows[0].hasAttribute('data-ceiling')"
    )
    assert browser.problems(mark) == []


def test_unit_link_opens_its_page(browser: Browser, site: Path) -> None:
    browser.goto((site / "index.html").as_uri())
    mark = len(browser.events)
    browser.click_and_wait_load("document.querySelector('a[href=\"units/layer3-0.html\"]')")
    assert browser.eval("location.href") == (site / "units" / "layer3-0.html").as_uri()
    assert browser.eval("document.querySelector('h1').textContent").startswith("Unit layer3:0")
    assert browser.problems(mark) == []
    # The exemplar strip loads from the site itself under the page's CSP.
    assert browser.eval("document.querySelector('img.exemplars').naturalWidth") == 8
    assert browser.eval("typeof window.__xss") == "undefined"
    assert "pwned" not in browser.eval("document.title")
    text = browser.eval("document.body.innerText")
    assert SCRIPT_LABEL in text and "window.__xss = 3" in text
    data = json.loads(browser.eval("document.getElementById('page-data').textContent"))
    assert data["unit"] == {"layer": "layer3", "index": 0}
    # Back on the index through the page's own link.
    browser.click_and_wait_load("document.querySelector('header nav a')")
    assert browser.eval("location.href") == (site / "index.html").as_uri()


def test_every_page_loads_cleanly(browser: Browser, site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 8
    for p in pages:
        mark = len(browser.events)
        browser.goto(p.as_uri())
        assert browser.problems(mark) == [], p.name
        assert browser.eval("typeof window.__xss") == "undefined", p.name
        assert "pwned" not in browser.eval("document.title"), p.name
        # Sorting works on every page's tables (no script error on click).
        browser.eval(
            "Array.from(document.querySelectorAll('table.sortable thead th'))"
            ".forEach(th => th.click())"
        )
        assert browser.problems(mark) == [], p.name


def test_contents_list_names_suite_target_and_methods(browser: Browser, site: Path) -> None:
    browser.goto((site / "index.html").as_uri())
    items = browser.eval(
        "Array.from(document.querySelectorAll('header nav li')).map(li => li.innerText)"
    )
    sections = browser.eval(
        "Array.from(document.querySelectorAll('main section.suite')).map(s => "
        "[s.dataset.suite, Array.from(s.querySelectorAll('table.results tbody tr[data-method]'))"
        ".map(r => r.dataset.method)])"
    )
    assert len(items) == len(sections) > 1
    # Each entry, as the reader sees it, names its suite, the target and every method of its
    # table; entries come in the sections' order (suite, then target).
    for text, (suite, methods) in zip(items, sections, strict=True):
        assert text.startswith(suite), (text, suite)
        assert "synth.resnet" in text
        for method in methods:
            assert method in text, (text, method)
    # And the links go to those sections.
    hrefs = browser.eval(
        "Array.from(document.querySelectorAll('header nav a')).map(a => a.getAttribute('href'))"
    )
    ids = browser.eval("Array.from(document.querySelectorAll('main section.suite')).map(s => s.id)")
    assert hrefs == [f"#{i}" for i in ids]
