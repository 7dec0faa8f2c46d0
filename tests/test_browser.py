"""Real browser checks in headless Chromium: an exported step page works offline, and
JupyterLab runs notebook 02 and drives its stepper.

The exported page is opened from a file with every request that is not that file refused, so a
page that needed the network would show nothing; next is pressed (button, then arrow key) and the
drawing must change.

Starts JupyterLab on a free port of 127.0.0.1 over a *copy* of the notebooks (the UI must not
autosave outputs into the committed files), opens ``02_tombstone_cascade.ipynb``, runs all
cells, presses the stepper's next button, checks that the tree drawn by the stepper changed, saves
a screenshot under ``build/``, and stops the server. Skipped where Debian's chromium or the
playwright package is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = "02_tombstone_cascade.ipynb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url}")


@pytest.fixture
def jupyterlab(tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    port, token = _free_port(), "himamba-browser-test"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           # a layout or settings saved by the user's own JupyterLab must not reopen other notebooks here
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", 60)
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def test_exported_page_steps_offline(tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from himamba.sim.scenarios import b1_replay

    run = b1_replay(False)
    path = run.recorder.to_html(tmp_path / "b1.html", names=run.names)
    url = path.resolve().as_uri()
    refused = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
        page = context.new_page()

        def only_the_file(route) -> None:
            if route.request.url == url:
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_file)
        page.goto(url)
        shown = page.locator("section.hm-row.hm-on")
        assert shown.count() == 1
        first = shown.locator("svg").inner_html()
        assert "P #" in shown.inner_text() or "root" in first
        page.click("#hm-next")
        second = page.locator("section.hm-row.hm-on svg").inner_html()
        assert second != first
        page.keyboard.press("ArrowRight")
        third = page.locator("section.hm-row.hm-on svg").inner_html()
        assert third != second
        assert "step 3 of" in page.inner_text("#hm-pos")
        page.keyboard.press("ArrowLeft")
        assert page.locator("section.hm-row.hm-on svg").inner_html() == second
        box = page.locator("section.hm-row.hm-on svg").bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50  # drawn, not blank
        browser.close()
    assert refused == []


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_an_export_with_injected_labels_runs_nothing_and_shows_the_label(tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from himamba.sim.scenarios import b1_replay

    run = b1_replay(True)
    names = {nid: HOSTILE for nid in run.names}
    path = run.recorder.to_html(tmp_path / "hostile.html", names=names, theme="dark")
    last = run.recorder.steps[-1].index
    dialogs = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(offline=True, viewport={"width": 1200, "height": 900}).new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.resolve().as_uri() + f"#step={last}")  # a per-step link opens that step
        shown = page.locator("section.hm-row.hm-on")
        assert shown.get_attribute("data-step") == str(last) and "FAILED" in shown.inner_text()
        page.keyboard.press("Home")
        for _ in range(4):
            page.click("#hm-next")
        assert HOSTILE in page.locator("body").inner_text()  # the label reads as text
        page.click("#hm-play")
        page.wait_for_timeout(2_000)
        assert page.locator("#hm-play").inner_text().strip() in ("■ stop", "▶ play")
        assert page.evaluate("location.hash").startswith("#step=")
        shots = ROOT / "build"
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / "browser_export_dark.png"))
        browser.close()
    assert dialogs == []


def test_stepper_in_jupyterlab(jupyterlab) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base, token = jupyterlab
    shots = ROOT / "build"
    shots.mkdir(exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
        page.get_by_text("| Idle").first.wait_for(timeout=90_000)  # the kernel is up
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        next_button = page.locator("button:has-text('next')").first
        next_button.wait_for(state="attached", timeout=120_000)
        next_button.scroll_into_view_if_needed()  # JupyterLab only lays out cells near the view
        next_button.wait_for(state="visible", timeout=30_000)
        stepper = page.locator(".widget-vbox", has=page.locator("button:has-text('next')")).first
        tree = stepper.locator("svg").first
        tree.wait_for(state="attached", timeout=30_000)
        before = tree.inner_html()
        label_before = stepper.inner_text()
        next_button.click()
        deadline = time.time() + 30
        after = before
        while after == before and time.time() < deadline:  # the widget replaces its SVG element
            page.wait_for_timeout(250)
            after = stepper.locator("svg").first.inner_html()
        assert after != before
        assert stepper.inner_text() != label_before
        next_button.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "browser_stepper.png"), full_page=False)
        browser.close()
    assert (shots / "browser_stepper.png").stat().st_size > 10_000
