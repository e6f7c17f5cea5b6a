"""Every notebook, executed top to bottom in a real Jupyter kernel (the installed "PacketScript
Lab" kernel spec), and checked for what its cells produced: the verdict counts of each run,
the figures and summary tables, the traffic the lab observed.

Each notebook runs three times: against the live lab (marked ``lab``: under CI a machine that
cannot create namespaces fails the test), on the replay backend as on Binder
(``PACKETSCRIPT_BACKEND=replay``), and on the replay backend in the plain ``python3`` kernel,
as in VS Code or Binder's default kernel: a notebook loads the extension itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "packetscript-lab"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Install the kernel spec into a private prefix, as a user's `python -m kernel_magic
    install --prefix` would, and make Jupyter find it there."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    subprocess.run([sys.executable, "-m", "kernel_magic", "install", "--prefix", str(prefix)],
                   check=True, env=env, capture_output=True)
    return {"JUPYTER_PATH": str(prefix / "share" / "jupyter"), "PYTHONPATH": env["PYTHONPATH"]}


def execute(name: str, kernel_env: dict, monkeypatch, backend: str, kernel: str):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    if backend == "replay":
        monkeypatch.setenv("PACKETSCRIPT_BACKEND", "replay")
    else:
        monkeypatch.delenv("PACKETSCRIPT_BACKEND", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert nb.metadata.kernelspec.name == KERNEL
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name=kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()      # raises CellExecutionError if any cell fails
    return Executed(nb)


class Executed:
    """Reading the outputs of an executed notebook the way a reader of it would."""

    def __init__(self, nb):
        self.cells = [c for c in nb.cells if c.cell_type == "code"]

    def outputs(self):
        for cell in self.cells:
            yield from cell.outputs

    def text(self) -> str:
        parts = []
        for o in self.outputs():
            parts.append(o.get("text", "") if o.output_type == "stream"
                         else o.get("data", {}).get("text/plain", ""))
        return "\n".join(parts)

    def runs(self, name: str) -> list[dict]:
        """Summaries of the runs called ``name``, in order: counters, backend, traffic."""
        found = []
        for cell in self.cells:
            for o in cell.outputs:
                data = o.get("data", {})
                text = data.get("text/plain", "")
                m = re.match(rf"packetscript '{name}' on (\w+), [\d.]+ s: (.*)", text)
                if not m:
                    continue
                run = {"backend": m.group(1), "cell": cell,
                       **{k: int(v) for k, v in re.findall(r"(\w+) (\d+)", m.group(2))}}
                assert "<table class='packetscript-summary'>" in data.get("text/html", "")
                assert "| seen |" in data.get("text/markdown", "")
                for t in re.finditer(r"traffic (.+?): (.*)", text):
                    run.setdefault("traffic", []).append(
                        {"flow": t.group(1), **{k: int(v) for k, v in
                                                re.findall(r"(\w+) (\d+)\b(?!\.)", t.group(2))}})
                found.append(run)
        assert found, f"no summary of a run named {name!r}"
        return found

    @staticmethod
    def has_png(cell) -> bool:
        return any("image/png" in o.get("data", {}) for o in cell.outputs)


def expected_backend(backend):
    return "nfqueue" if backend == "lab" else "replay"


# (backend, kernel): the live lab and replay in the PacketScript Lab kernel; replay in the
# plain python3 kernel, where only the notebook's own %load_ext provides the magic
SETUPS = [pytest.param(("lab", KERNEL), marks=pytest.mark.lab, id="lab"),
          pytest.param(("replay", KERNEL), id="replay"),
          pytest.param(("replay", "python3"), id="replay-python3")]


@pytest.fixture(params=SETUPS)
def setup(request):
    backend, kernel = request.param
    if backend == "lab":
        from labutil import require_lab
        require_lab()          # skips, or fails under CI, when namespaces cannot be made
    return backend, kernel


@pytest.fixture
def backend(setup):
    return setup[0]


@pytest.fixture
def kernel(setup):
    return setup[1]


def check_fallback_said(nb: Executed, backend: str) -> None:
    said = nb.text().count("no private lab network here")
    assert said == (1 if backend == "replay" else 0)


def test_01_first_script(kernel_env, monkeypatch, backend, kernel):
    nb = execute("01-first-script.ipynb", kernel_env, monkeypatch, backend, kernel)
    check_fallback_said(nb, backend)
    (base,) = nb.runs("baseline")
    (drop,) = nb.runs("drop_udp")
    assert base["backend"] == drop["backend"] == expected_backend(backend)
    assert (base["seen"], base["accepted"], base["dropped"]) == (100, 100, 0)
    assert (drop["seen"], drop["accepted"], drop["dropped"]) == (100, 0, 100)
    assert nb.has_png(base["cell"]) and nb.has_png(drop["cell"])
    # the dashboard lived while the run did; the saved cell keeps one figure and no widget
    for cell in (base["cell"], drop["cell"]):
        kinds = [set(o.get("data", {})) for o in cell.outputs]
        assert not any("application/vnd.jupyter.widget-view+json" in k for k in kinds), kinds
        assert sum("image/png" in k for k in kinds) == 1, kinds
    if backend == "lab":
        assert base["traffic"][0]["received"] == 100
        assert drop["traffic"][0]["received"] == 0 and drop["traffic"][0]["sent"] == 100
        assert drop["queue_drops"] == 0


def test_02_dnat(kernel_env, monkeypatch, backend, kernel):
    nb = execute("02-dnat.ipynb", kernel_env, monkeypatch, backend, kernel)
    check_fallback_said(nb, backend)
    (dnat,) = nb.runs("dnat")
    assert dnat["backend"] == expected_backend(backend)
    assert dnat["seen"] == dnat["continued"] == dnat["modified"] == 150
    assert "'ip.daddr'" in nb.text() and "'udp.check'" in nb.text()
    if backend == "lab":
        (udp,) = dnat["traffic"]
        assert udp["sent"] == udp["received"] == 150      # all reached the server
    assert nb.has_png(dnat["cell"])


def test_03_stateful_rate_limiter(kernel_env, monkeypatch, backend, kernel):
    nb = execute("03-stateful-rate-limiter.ipynb", kernel_env, monkeypatch, backend, kernel)
    (lim,) = nb.runs("limiter")
    assert lim["backend"] == expected_backend(backend)
    assert lim["seen"] == 300
    assert 70 <= lim["accepted"] <= 100                 # burst 10 + 50/s x 1.5 s = 85
    assert lim["accepted"] + lim["dropped"] == lim["seen"]
    if backend == "lab":
        assert lim["traffic"][0]["received"] == lim["accepted"]
    assert nb.has_png(lim["cell"])


def test_04_kernel_portability(kernel_env, monkeypatch, backend, kernel):
    nb = execute("04-kernel-portability.ipynb", kernel_env, monkeypatch, backend, kernel)
    lab_profile, kernel_profile, portable = nb.runs("counter")
    assert (lab_profile["seen"], lab_profile["errors"], lab_profile["dropped"]) == (40, 0, 20)
    assert kernel_profile["errors"] == kernel_profile["seen"] == kernel_profile["dropped"] == 40
    assert (portable["errors"], portable["accepted"], portable["dropped"]) == (0, 20, 20)
    text = nb.text()
    # the checker's report and the magic's findings name the cell line of string.format
    assert "cell line 10: error [library]" in text
    assert "string.format" in text
    assert "no findings for the kernel profile" in text
    report_html = [o["data"]["text/html"] for o in nb.outputs()
                   if "text/html" in o.get("data", {}) and "<th>rule</th>" in o["data"]["text/html"]]
    assert report_html and "library" in report_html[0]


def test_05_experiment_load_sweep(kernel_env, monkeypatch, backend, kernel):
    nb = execute("05-experiment-load-sweep.ipynb", kernel_env, monkeypatch, backend, kernel)
    tables = [o["data"]["text/markdown"] for o in nb.outputs()
              if "text/markdown" in o.get("data", {}) and "offered (pkt/s)" in
              o["data"]["text/markdown"]]
    assert len(tables) == 1
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in tables[0].splitlines() if re.match(r"\|\s*\d", line)]
    assert [int(r[0]) for r in rows] == [25, 50, 100, 200, 400]
    for offered, seen, accepted, dropped, *_rest in ([int(x) for x in r[:4]] for r in rows):
        assert seen == offered and accepted + dropped == seen
        if offered <= 50:
            assert dropped == 0                            # under the limit: all pass
        else:
            assert 50 <= accepted <= 70                    # limit 50/s + burst 10
    assert f"backend: {expected_backend(backend)}" in tables[0]
    plot_cells = [c for c in nb.cells if "plt.show()" in c.source]
    assert plot_cells and nb.has_png(plot_cells[0])


def test_saved_notebooks_keep_no_live_widgets():
    """What GitHub, nbviewer or a kernel-less JupyterLab shows: a saved widget view would be
    "Error displaying widget: model not found"; a finished run leaves a figure and a table."""
    import glob
    for path in sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        views = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert views == [], f"{path}: cells {views} keep a widget view"
