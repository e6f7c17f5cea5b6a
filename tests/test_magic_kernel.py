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


TRAFFIC = "--traffic 'udp client server:9000 rate=100 count=3000'"   # 30 s: outlasts the cells
CELLS = [
    # 0: open-ended run: returns at once, the pump keeps the dashboard up to date
    f"%%packetscript live {TRAFFIC}\nfunction process_packet(p)\n  return NF_ACCEPT\nend",
    # 1: an idle (awaiting) kernel lets the pump's asyncio task move the widget's numbers
    "import asyncio, kernel_magic, time\n"
    "run = kernel_magic.get_session().runs['live']\n"
    "def shown():\n"
    "    found = re.findall(r\"(\\d+)</div><div style='color:#666'>seen\", "
    "run.dashboard.counters.value)\n"
    "    return int(found[0]) if found else 0\n"
    "deadline = time.monotonic() + 30\n"
    "while shown() < 50 and time.monotonic() < deadline:\n"
    "    await asyncio.sleep(0.1)\n"
    "print('pump saw', [str(shown())])",
    # 2: re-run with another script: replaced in place
    f"%%packetscript live {TRAFFIC}\nfunction process_packet(p)\n  return NF_DROP\nend",
    # 3: wait until the new script has judged packets
    "deadline = time.monotonic() + 30\n"
    "while run.handle.stats()['dropped'] == 0 and time.monotonic() < deadline:\n"
    "    await asyncio.sleep(0.1)",
    "%packetscript stop live",
]


def test_pump_replace_and_late_summary_in_a_real_kernel(tmp_path, monkeypatch):
    assert install(tmp_path, "install").returncode == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import re")] + \
        [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbclient.NotebookClient(nb, timeout=60, kernel_name="packetscript-lab").execute()
    first, pumped, second, _, stop = nb.cells[1:]

    seen = re.findall(r"pump saw \['(\d+)'\]", pumped.outputs[0]["text"])
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
        assert counts["accepted"] >= 50 and counts["dropped"] > 0, text
        assert counts["accepted"] + counts["dropped"] == counts["seen"] < 3000, text
        assert any("image/png" in o.get("data", {}) for o in cell.outputs)


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
