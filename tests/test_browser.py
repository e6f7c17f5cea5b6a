"""A student's notebook in a real browser: JupyterLab 4 and Notebook 7 in Debian's chromium.

One live cell runs on the lab (NFQUEUE) and its dashboard's numbers move while it runs;
an open-ended run is ended with its Stop button; the notebook is saved, its kernel shut
down and the notebook opened again, in JupyterLab and in Notebook 7: what was saved shows
the figures and tables and no "Error displaying widget". A page reloaded during a run still
gets the run's summary when Stop is pressed there.

Needs chromium (apt), playwright and jupyterlab (the test extra) and a lab (root or user
namespaces). Missing any of them skips, and under CI fails (tests/conftest.py).
Set PACKETSCRIPT_SCREENSHOTS=DIR to keep screenshots of each step.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from browser_util import CHROMIUM, JupyterServer, missing
from labutil import lab_unavailable_reason

pytestmark = pytest.mark.lab

WIDGET = "application/vnd.jupyter.widget-view+json"
LIVE = ("%%packetscript live --duration 4\n"
        "function process_packet(p)\n"
        "  local ip = p:data(packet_eth):data(packet_ip)\n"
        "  if ip and ip:daddr():get() == '10.77.0.2' and math.random() < 0.25 then\n"
        "    return NF_DROP\n"
        "  end\n"
        "  return NF_ACCEPT\n"
        "end")
OPEN = ("%%packetscript open --traffic 'udp client server:9000 rate=50 count=1500'\n"
        "function process_packet(p)\n  return NF_ACCEPT\nend")
# the "seen" number of the dashboard in cell i (null while there is none)
SEEN = """i => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
  for (const td of cell ? cell.querySelectorAll('.packetscript-dash td') : []) {
    const d = td.querySelectorAll('div');
    if (d.length === 2 && d[1].textContent.trim() === 'seen') return parseInt(d[0].textContent);
  }
  return null;
}"""

# every image in a dashboard has loaded and has a size (an empty <img> shows a broken icon)
IMAGES_OK = ("[...document.querySelectorAll('.packetscript-dash img')]"
             ".every(i => i.complete && i.naturalWidth > 0)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lacking = missing()
    if lacking:
        pytest.skip("the browser test needs " + ", ".join(lacking))
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"the lab cannot run here: {reason}")
    srv = JupyterServer(tmp_path_factory.mktemp("jupyter"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Shots:
    def __init__(self, page):
        self.page = page
        self.dir = os.environ.get("PACKETSCRIPT_SCREENSHOTS")
        self.n = 0

    def __call__(self, name: str) -> None:
        if self.dir:
            self.n += 1
            Path(self.dir).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(self.dir) / f"{self.n:02d}-{name}.png"))


def write_notebook(server, name: str, sources: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "packetscript-lab", "display_name": "PacketScript Lab",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, server.notebooks / name)


def open_lab(page, server, name: str):
    from playwright.sync_api import expect
    page.goto(server.page_url(f"lab/tree/{name}"))
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle").first).to_be_visible(
        timeout=90_000)


def run_cell(page, i: int):
    cell = page.locator(".jp-Notebook .jp-Cell").nth(i)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    return cell


def save(page, path: Path, outputs: int) -> dict:
    """Save with Ctrl+S; returns the notebook as written, once it holds ``outputs`` outputs."""
    page.keyboard.press("Escape")                 # command mode: the shortcut is the notebook's
    page.keyboard.press("Control+s")
    for _ in poll(20):
        nb = json.loads(path.read_text())
        if sum(len(c["outputs"]) for c in nb["cells"]) >= outputs:
            return nb
    raise AssertionError(f"{path.name} was not saved with {outputs} outputs")


def poll(seconds: float, step: float = 0.1):
    """Yield until ``seconds`` have passed (a deadline for conditions no event tells of)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield
        time.sleep(step)


def wait_for_more_packets(page, i: int):
    """The dashboard of cell ``i`` shows packets, then more: its numbers move."""
    handle = page.wait_for_function(f"({SEEN})({i}) > 0", timeout=30_000)
    first = page.evaluate(f"({SEEN})({i})")
    page.wait_for_function(f"({SEEN})({i}) > {first}", timeout=10_000)
    return first, handle


def widget_errors(page, console: list[str]) -> list[str]:
    shown = page.get_by_text("Error displaying widget").all_inner_texts()
    return shown + [m for m in console if "model not found" in m]


def test_first_hour_in_jupyterlab_and_notebook7(server, browser):
    from playwright.sync_api import expect

    write_notebook(server, "first_hour.ipynb", [LIVE, OPEN])
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    shot = Shots(page)
    open_lab(page, server, "first_hour.ipynb")

    # a live cell: feedback at once, then a dashboard whose numbers move, then one result
    live = run_cell(page, 0)
    expect(live.locator(".jp-OutputArea-output", has_text="live:").first).to_be_visible(
        timeout=2_000)
    shot("live-starting")
    for _ in range(2):                 # before and after its first figure: no broken image
        page.wait_for_function(f"({SEEN})(0) !== null", timeout=30_000)
        assert page.evaluate(IMAGES_OK), "a broken image in the dashboard"
        wait_for_more_packets(page, 0)
    page.wait_for_function(f"{IMAGES_OK} && document.querySelector('.packetscript-dash img')",
                           timeout=10_000)
    expect(live.locator(".packetscript-dash")).to_contain_text("running")
    shot("live-running")
    expect(live.locator(".packetscript-summary")).to_be_visible(timeout=60_000)
    expect(live.locator(".packetscript-dash")).to_have_count(0)
    expect(live.locator(".jp-OutputArea-output img")).to_have_count(1)
    expect(live.locator(".jp-OutputArea-output").last).to_contain_text(
        "packetscript 'live' on nfqueue, 4.0 s")
    shot("live-finished")

    # an open-ended run ends with its Stop button, and its result replaces its dashboard
    opened = run_cell(page, 1)
    wait_for_more_packets(page, 1)
    opened.get_by_role("button", name="Stop").click()
    expect(opened.locator(".packetscript-summary")).to_be_visible(timeout=30_000)
    expect(opened.locator(".packetscript-dash")).to_have_count(0)
    expect(opened.locator(".jp-OutputArea-output", has_text="run ended: stopped")).to_be_visible()
    shot("open-stopped")

    saved = save(page, server.notebooks / "first_hour.ipynb", outputs=4)
    for cell in saved["cells"][:2]:             # (Shift+Enter added an empty third cell)
        kinds = [set(o.get("data", {})) for o in cell["outputs"]]
        assert not any(WIDGET in k for k in kinds), kinds
        assert sum("image/png" in k for k in kinds) == 1, kinds
        assert sum("text/html" in k for k in kinds) == 1, kinds
    server.shutdown_kernels()

    # opened again: the saved figures and tables, no widget errors
    page.close()
    for url in ("lab/tree/first_hour.ipynb", "notebooks/first_hour.ipynb"):
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        console = []
        page.on("console", lambda m, c=console: c.append(m.text))
        page.goto(server.page_url(url))
        expect(page.locator(".packetscript-summary")).to_have_count(2, timeout=60_000)
        expect(page.locator(".jp-OutputArea-output img")).to_have_count(2)
        Shots(page)("reopened-" + url.split("/")[0])
        # the widget manager reports a missing model only once it has restored its state
        page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output').length"
                               " >= 4", timeout=30_000)
        assert widget_errors(page, console) == []
        page.close()
    server.shutdown_kernels()


def test_stop_after_a_page_reload_still_writes_the_summary(server, browser):
    from playwright.sync_api import expect

    write_notebook(server, "reload.ipynb", [OPEN])
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    open_lab(page, server, "reload.ipynb")
    run_cell(page, 0)
    wait_for_more_packets(page, 0)
    save(page, server.notebooks / "reload.ipynb", outputs=2)
    page.reload()
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
    wait_for_more_packets(page, 0)               # the dashboard is live again after the reload
    cell = page.locator(".jp-Notebook .jp-Cell").nth(0)
    cell.get_by_role("button", name="Stop").click()
    expect(cell.locator(".packetscript-summary")).to_be_visible(timeout=30_000)
    expect(cell.get_by_text("run ended: stopped", exact=True)).to_be_visible()
    expect(cell.locator(".jp-OutputArea-output img")).to_have_count(1)    # the figure too
    Shots(page)("reloaded-stopped")
    server.shutdown_kernels()
    page.close()
