"""The course in a real browser: Debian's chromium, headless, driven by Playwright.

1. The static site (built here into a temporary folder, nothing executed): every page loads, has
   its title, shows its images, and no internal link (nor the anchor it points at) is broken.
2. JupyterLab, started by the project's own command (``make lab`` with a port, a token and no
   browser) on a scratch notebook: a widget cell runs, the slider moves, the output changes.

The tests assert on the DOM; the screenshots under data/screenshots/ (ignored by git) are for a
person to look at. Without chromium (``apt-get install chromium``; or point ``$TLLAB_CHROMIUM``
at a Chromium binary) the tests skip and say why.
"""

import functools
import http.server
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

from tlutils.core.paths import project_root
from tlutils.course.curriculum import NOTEBOOKS

ROOT = project_root()
SCREENSHOTS = ROOT / "data" / "screenshots"
CHROMIUM = os.environ.get("TLLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _skip(reason: str):
    print(f"\nskipped: {reason}", file=sys.__stderr__)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        _skip("no Chromium found (install Debian's chromium: apt-get install chromium, or set $TLLAB_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("playwright is not installed (pip install -r requirements-site.txt -c constraints.txt)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site, served on a free local port: (folder, base URL)."""
    if importlib.util.find_spec("myst_nb") is None:
        _skip("the site's tools are not installed (pip install -r requirements-site.txt -c constraints.txt)")
    from tlutils.course.site import build_site

    folder = tmp_path_factory.mktemp("site") / "html"
    seconds = build_site(folder)
    print(f"\nsite built in {seconds:.1f} s", file=sys.__stderr__)
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda *args: None}), directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


_PAGE_FACTS = """async () => {
    const images = Array.from(document.images);
    const loaded = await Promise.all(images.map(img => {
        img.loading = "eager";
        return img.decode().then(() => img.naturalWidth > 0, () => false);
    }));
    return {
        title: document.title,
        h1: Array.from(document.querySelectorAll("main h1, article h1")).map(h => h.textContent.trim()),
        images: images.map((img, i) => [img.getAttribute("src"), loaded[i]]),
        links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
        ids: Array.from(document.querySelectorAll("[id]")).map(e => e.id)
            .concat(Array.from(document.querySelectorAll("a[name]")).map(a => a.name)),
        nav: Array.from(document.querySelectorAll(".bd-sidenav a")).map(a => a.getAttribute("href")),
        text: document.body.innerText,
    };
}"""


def _target_file(folder: Path, url: str) -> Path:
    path = urlparse(url).path.lstrip("/")
    return folder / (path + "index.html" if path.endswith("/") or not path else path)


def test_every_page_of_the_site_loads_with_its_title_images_and_links(browser, site):
    folder, base = site
    pages = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.html")
                   if not p.relative_to(folder).as_posix().startswith("_static/"))  # theme templates, not pages
    notebooks = [Path(name).stem for name, _, _ in NOTEBOOKS if (ROOT / "notebooks" / name).is_file()]
    assert {f"notebooks/{n}.html" for n in notebooks} | {"index.html", "docs/TEACHING.html", "docs/questions.html"} \
        <= set(pages)
    (SCREENSHOTS / "site").mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    facts, problems = {}, []
    for name in pages:
        response = page.goto(base + name, wait_until="load")
        assert response is not None and response.ok, f"{name}: HTTP {response and response.status}"
        facts[name] = found = page.evaluate(_PAGE_FACTS)
        page.screenshot(path=str(SCREENSHOTS / "site" / (name.replace("/", "__").removesuffix(".html") + ".png")))
        if not found["title"].strip() or "Transfer Learning Lab" not in found["title"]:
            problems.append(f"{name}: title {found['title']!r}")
        if name not in ("genindex.html", "search.html") and not found["h1"]:
            problems.append(f"{name}: no heading")
        problems += [f"{name}: image {src!r} does not load" for src, ok in found["images"] if not ok]
    page.close()
    for name, found in facts.items():
        for link in found["links"]:
            if not link.startswith(base):
                continue  # external (the theme's, MathJax's): not the site's to keep
            address, anchor = urldefrag(link)
            target = _target_file(folder, address)
            if not target.is_file():
                problems.append(f"{name}: broken link {link}")
            elif anchor and target.suffix == ".html":
                key = target.relative_to(folder).as_posix()
                if key in facts and anchor not in facts[key]["ids"]:
                    problems.append(f"{name}: link {link} points at a missing anchor")
    assert not problems, "\n".join(problems[:40])

    home = facts["index.html"]
    nav = [Path(href).stem for href in home["nav"] if "notebooks/" in href]
    assert nav == notebooks, f"navigation not in curriculum order: {nav}"
    assert "Transfer Learning Lab" in home["h1"][0]
    tour = facts["notebooks/00_setup_and_tour.html"]
    assert "Interactive in JupyterLab" in tour["text"] and len(tour["images"]) >= 2, "widget fallback missing"
    bank = facts["docs/questions.html"]
    evidence = [link for link in bank["links"] if "/notebooks/" in link and "#" in link]
    assert len(evidence) >= 100, f"{len(evidence)} evidence links in the question bank"
    print(f"\n{len(pages)} pages checked; screenshots in {SCREENSHOTS / 'site'}", file=sys.__stderr__)


SCRATCH = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "widget-cell", "metadata": {}, "outputs": [],
               "source": "import ipywidgets as widgets\nimport matplotlib.pyplot as plt\n\n"
                         "from tlutils.course.widgets import interactive_plot\n\n\n"
                         "def bars(steps: int):\n    print(f'drawn with steps = {steps}')\n"
                         "    fig, ax = plt.subplots(figsize=(4, 2))\n    ax.bar(range(steps), range(steps))\n"
                         "    return fig\n\n\n"
                         "interactive_plot(bars, steps=widgets.IntSlider(value=3, min=1, max=9, description='steps'))"}],
    "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@pytest.fixture()
def lab(tmp_path):
    """JupyterLab started by `make lab` on a scratch folder: (base URL, token)."""
    if shutil.which("make") is None:
        _skip("make is not installed")
    (tmp_path / "scratch.ipynb").write_text(json.dumps(SCRATCH))
    port, token = _free_port(), secrets.token_hex(16)
    flags = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    flags += " --allow-root" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    # -o: take the set-up and the prepared assets as done (make test has done both; `make lab` alone does them)
    command = ["make", "--no-print-directory", "-o", ".venv/.setup-done", "-o", "data/cache/.prepared", "lab",
               f"LAB_DIR={tmp_path}", f"LAB_FLAGS={flags}"]
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_jupyterlab_runs_a_widget_cell_and_the_slider_changes_the_output(browser, lab):
    base, token = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    from playwright.sync_api import TimeoutError as Timeout

    page.goto(f"{base}lab/tree/scratch.ipynb?token={token}")
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    editor.wait_for(timeout=120_000)
    # the kernel is ready when the status bar says "Python 3 (ipykernel) | Idle"; a cell run before
    # that can be dropped, so wait for it, then run the cell until its prompt shows it was taken
    try:
        page.wait_for_function("/\\|\\s*Idle\\b/.test(document.body.innerText)", timeout=180_000)
    except Timeout:
        page.screenshot(path=str(SCREENSHOTS / "lab-kernel-not-idle.png"))
        raise
    prompt = "document.querySelector('.jp-Notebook .jp-Cell .jp-InputPrompt').textContent.trim() !== '[ ]:'"
    for attempt in range(3):
        editor.click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(prompt, timeout=20_000)
            break
        except Timeout:
            page.screenshot(path=str(SCREENSHOTS / "lab-not-run.png"))
            if attempt == 2:
                raise
    output = page.locator(".jp-Notebook .widget-output").first
    output.get_by_text("drawn with steps = 3").wait_for(timeout=180_000)
    image_before = output.locator("img").first.get_attribute("src", timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "lab-before.png"))

    handle = page.locator(".jp-Notebook .widget-slider .noUi-handle").first
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    output.get_by_text("drawn with steps = 5").wait_for(timeout=60_000)
    assert "steps = 3" not in output.inner_text(), "the output was not redrawn"
    assert page.locator(".jp-Notebook .widget-readout").first.inner_text().strip() == "5"
    assert output.locator("img").first.get_attribute("src") != image_before, "the plot did not change"
    page.screenshot(path=str(SCREENSHOTS / "lab-after.png"))
    page.close()
