#!/usr/bin/env python3
"""Screenshots of every notebook as a reader sees it in JupyterLab, light and dark theme.

For each theme, starts JupyterLab (headless Chromium through playwright, Debian's
``/usr/bin/chromium``) on a free port of 127.0.0.1 over a *temporary copy* of ``notebooks/``
(the committed notebooks keep no outputs), with its own workspaces and settings folders so that no
saved layout reopens other notebooks; the dark theme is chosen by writing JupyterLab's theme
setting into that settings folder. Then, per notebook: opens it, runs Run → Run All Cells, waits
until the kernel has been idle for a few seconds with no cell busy, and scrolls the notebook's
scroll container from top to bottom one view at a time (JupyterLab lays out cells lazily),
writing one PNG per view as ``OUT/<notebook>/<theme>-NN.png``. The run copy is saved and read
back to find error outputs.

Prints one line per notebook and theme: screens written, seconds, the widest rendered output
in CSS pixels (its scroll width, which is more than the notebook's width when it overflows), and
any error output (an exception, or text written to stderr) found.

    python bench/notebook_screens.py [--notebook 02_tombstone_cascade] [--theme both] [--out build/screens]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
VIEWPORT = {"width": 1400, "height": 1000}
TOKEN = "himamba-screens"

# the widest rendered output among those laid out now, in CSS pixels
WIDEST_JS = """() => {
  let w = 0;
  for (const el of document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')) {
    w = Math.max(w, el.scrollWidth);
    for (const svg of el.querySelectorAll('svg')) w = Math.max(w, svg.getBoundingClientRect().width);
  }
  return Math.round(w);
}"""
SCROLLER = ".jp-NotebookPanel .jp-WindowedPanel-outer"


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


def _start_lab(tmp: Path, theme: str) -> tuple[subprocess.Popen, str, Path]:
    root = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    settings = tmp / "settings"
    theme_file = settings / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    theme_file.parent.mkdir(parents=True)
    theme_file.write_text(json.dumps({"theme": THEMES[theme]}))
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.write_text(json.dumps({"fetchNews": "false"}))  # no news toast over the notebook
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}", f"--LabApp.user_settings_dir={settings}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp / "jupyterlab.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    _wait_for(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", 60)
    return proc, f"http://127.0.0.1:{port}", root


def _wait_idle(page, timeout: float, quiet: float = 3.0) -> None:
    """Wait until the status bar has said Idle for ``quiet`` seconds and no prompt reads [*]."""
    deadline = time.time() + timeout
    since = None
    while time.time() < deadline:
        idle = page.get_by_text("| Idle").count() > 0
        busy = page.locator(".jp-InputPrompt:has-text('[*]')").count() > 0
        if idle and not busy:
            since = since or time.time()
            if time.time() - since >= quiet:
                return
        else:
            since = None
        page.wait_for_timeout(250)
    raise TimeoutError("the notebook did not finish running")


def _shut_kernels(base: str) -> None:
    """Shut down every session's kernel, so that notebooks do not pile up running kernels."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={TOKEN}", timeout=10) as resp:
        sessions = json.load(resp)
    for s in sessions:
        req = urllib.request.Request(f"{base}/api/sessions/{s['id']}?token={TOKEN}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def _errors(path: Path) -> list[str]:
    """Error outputs in a saved notebook: exceptions and stderr text, one short line each."""
    found = []
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue', '')[:120]}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", "")).strip().splitlines()
                found.append(f"cell {i}: stderr: {text[0][:120] if text else ''}")
    return found


def _shoot(page, base: str, root: Path, name: str, theme: str, out: Path, timeout: float) -> str:
    start = time.time()
    dest = out / name
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{theme}-*.png"):
        old.unlink()
    # a workspace of its own: the layout left by the previous notebook does not come back
    page.goto(f"{base}/lab/workspaces/{theme}-{name}/tree/{name}.ipynb?token={TOKEN}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.get_by_text("| Idle").first.wait_for(timeout=90_000)
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    page.mouse.move(5, VIEWPORT["height"] - 5)  # no hover effect on what the pointer left behind
    page.wait_for_timeout(1_000)
    _wait_idle(page, timeout)
    page.keyboard.press("Control+s")  # to read the outputs back
    page.wait_for_timeout(1_500)
    scroller = page.locator(SCROLLER).first
    scroller.evaluate("el => el.scrollTo(0, 0)")
    page.wait_for_timeout(800)
    shots, widest, last_top = 0, 0, -1
    for _ in range(200):
        page.wait_for_timeout(700)  # lazily laid out cells and their outputs appear
        shots += 1
        page.screenshot(path=str(dest / f"{theme}-{shots:02d}.png"))
        widest = max(widest, page.evaluate(WIDEST_JS))
        top = scroller.evaluate("el => { el.scrollBy(0, el.clientHeight * 0.9); return el.scrollTop; }")
        page.wait_for_timeout(300)
        top = scroller.evaluate("el => el.scrollTop")
        if top == last_top:  # the end: the last scroll moved nothing
            shots -= 1
            (dest / f"{theme}-{shots + 1:02d}.png").unlink()
            break
        last_top = top
    errors = _errors(root / f"{name}.ipynb")
    took = time.time() - start
    return (f"{name} {theme}: {shots} screens, {took:.0f} s, widest output {widest} px, "
            f"errors: {'; '.join(errors) if errors else 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", action="append", help="notebook name, with or without .ipynb (repeatable; default all)")
    ap.add_argument("--theme", choices=["light", "dark", "both"], default="both")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "screens")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one notebook may run")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs Debian's chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    names = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    if args.notebook:
        wanted = [n.removesuffix(".ipynb") for n in args.notebook]
        missing = [n for n in wanted if n not in names]
        if missing:
            print(f"no such notebook: {', '.join(missing)}", file=sys.stderr)
            return 2
        names = wanted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop JupyterLab on the way out
    themes = ["light", "dark"] if args.theme == "both" else [args.theme]
    failed = 0
    for theme in themes:
        with tempfile.TemporaryDirectory() as tmp:
            proc, base, root = _start_lab(Path(tmp), theme)
            try:
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                    for name in names:
                        page = browser.new_page(viewport=VIEWPORT)
                        try:
                            print(_shoot(page, base, root, name, theme, args.out, args.timeout), flush=True)
                        except Exception as exc:  # one notebook's failure does not stop the others
                            failed += 1
                            print(f"{name} {theme}: FAILED {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
                        finally:
                            page.close()
                            _shut_kernels(base)
                    browser.close()
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
