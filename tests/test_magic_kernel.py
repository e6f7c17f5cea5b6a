"""The kernel spec and the magic inside a real Jupyter kernel: the extension is loaded at
start-up, the pump updates widgets while cells are idle, a re-run cell replaces the script in
place, and a run stopped later writes its summary into the cell that started it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def install(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "kernel_magic", *args, "--prefix", str(prefix)]
                          if args and args[0] == "install" else
                          [sys.executable, "-m", "kernel_magic", *args],
                          env=env, capture_output=True, text=True)


def test_install_writes_a_kernel_spec_that_loads_the_extension(tmp_path):
    res = install(tmp_path, "install")
    assert res.returncode == 0, res.stderr
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "packetscript-lab"
    assert str(spec_dir) in res.stdout
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "PacketScript Lab"
    assert spec["argv"][0] == sys.executable
    assert spec["argv"][1:3] == ["-m", "ipykernel_launcher"]
    assert "{connection_file}" in spec["argv"]
    assert spec["argv"][spec["argv"].index("--ext") + 1] == "kernel_magic.preload"
    assert (spec_dir / "logo-64x64.png").read_bytes()[:4] == b"\x89PNG"


def test_install_options_are_exclusive(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "kernel_magic", "install", "--user",
                          "--prefix", str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "not allowed with" in res.stderr


WAIT = """\
import asyncio, time, kernel_magic
async def until(test, seconds=30):
    deadline = time.monotonic() + seconds
    while not test():
        assert time.monotonic() < deadline, 'condition not met in time'
        await asyncio.sleep(0.05)       # an idle kernel lets the pump's asyncio task run
"""

CELLS = [
    # 0: open-ended run: returns at once, the pump keeps the dashboard up to date
    "%%packetscript live --traffic 'udp client server:9000 rate=100 count=600'\n"
    "function process_packet(p)\n  return NF_ACCEPT\nend",
    # 1: widget values move while the kernel is idle
    "run = kernel_magic.get_session().runs['live']\n"
    "seen = lambda: [int(n) for n in re.findall(r\"(\\d+)</div><div style='color:#666'>seen\", "
    "run.dashboard.counters.value)]\n"
    "await until(lambda: seen() and seen()[0] >= 50)\n"
    "print('pump saw', seen())",
    # 2: re-run with another script: replaced in place
    "%%packetscript live --traffic 'udp client server:9000 rate=100 count=600'\n"
    "function process_packet(p)\n  return NF_DROP\nend",
    "await until(run.handle.played_all.is_set)",
    "%packetscript stop live",
]


def test_pump_replace_and_late_summary_in_a_real_kernel(tmp_path, monkeypatch):
    assert install(tmp_path, "install").returncode == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import re\n" + WAIT)] + \
        [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbclient.NotebookClient(nb, timeout=60, kernel_name="packetscript-lab").execute()
    first, pumped, second, _, stop = nb.cells[1:]

    seen = re.findall(r"pump saw \[(\d+)\]", pumped.outputs[0]["text"])
    assert seen and int(seen[0]) >= 50, pumped.outputs     # widget values moved while idle

    assert "replaced in place" in "".join(o.get("text", "") for o in second.outputs)
    assert any(o.get("data", {}).get("text/plain") == "(this run continues in a later cell)"
               for o in first.outputs)

    def summary(cell):
        texts = [o.get("data", {}).get("text/plain", "") for o in cell.outputs]
        return next(t for t in texts if t.startswith("packetscript 'live'"))

    # the stopped run's figure and summary land in the cell that runs it now, and in `stop`;
    # both scripts judged part of the traffic, none of it twice
    for cell in (second, stop):
        text = summary(cell)
        counts = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", text))
        assert counts["seen"] == 600 and counts["accepted"] + counts["dropped"] == 600
        assert counts["accepted"] >= 50 and counts["dropped"] > 0
        assert sum("image/png" in o.get("data", {}) for o in cell.outputs) == 1
    # no cell keeps a live widget: a saved copy shows no "model not found" without a kernel
    widget_views = [o for c in nb.cells for o in c.outputs
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views == []


def test_a_duration_cell_shows_its_status_first_and_ends_with_one_figure(tmp_path, monkeypatch):
    """What a notebook keeps of a --duration cell: the first output said what was happening
    and became the figure; the second became the table; nothing else, no widget."""
    assert install(tmp_path, "install").returncode == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "%%packetscript once --duration 1\nfunction process_packet(p)\n  return NF_DROP\nend")]
    seen_first = []

    class Client(nbclient.NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            if not seen_first and msg["header"]["msg_type"] == "display_data":
                seen_first.append(msg["content"]["data"].get("text/plain"))
            return super().output(outs, msg, display_id, cell_index)

    Client(nb, timeout=60, kernel_name="packetscript-lab").execute()
    assert seen_first == ["once: compiling…"]
    outputs = [o for o in nb.cells[0].outputs if o["output_type"] == "display_data"]
    assert len(outputs) == 2
    figure, table = outputs
    assert set(figure["data"]) == {"image/png", "text/plain"}
    assert table["data"]["text/plain"].startswith("packetscript 'once' on replay, 1.0 s: seen 100")
    assert "text/html" in table["data"] and "text/markdown" in table["data"]


def test_load_ext_is_silent_and_harmless_in_the_packetscript_kernel(tmp_path, monkeypatch):
    """Notebooks start with %load_ext kernel_magic so that they run in any kernel; in the
    PacketScript Lab kernel, which loaded the extension already, it must change nothing."""
    assert install(tmp_path, "install").returncode == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import kernel_magic\nbefore = kernel_magic.get_session()",
        "%load_ext kernel_magic",
        "print(kernel_magic.get_session() is before)",
    )]
    nbclient.NotebookClient(nb, timeout=60, kernel_name="packetscript-lab").execute()
    assert nb.cells[1].outputs == []
    assert nb.cells[2].outputs[0]["text"] == "True\n"


@pytest.mark.parametrize("args, message", [(["frobnicate"], "invalid choice")])
def test_cli_mistakes(args, message, tmp_path):
    res = install(tmp_path, *args)
    assert res.returncode == 2 and message in res.stderr
