"""The dashboard widgets, the figure and the static summary, from recorded run data."""
from __future__ import annotations

import io

from matplotlib.image import imread

from kernel_magic import plots
from kernel_magic.dashboard import Dashboard
from kernel_magic.summary import RunSummary

CELL = ["%%packetscript demo --duration 2",
        "function process_packet(p)",
        "  local x = p.missing.field",
        "  return NF_ACCEPT",
        "end"]

# cumulative samples as a backend reports them: 100 packets/s, half dropped, from t=1 s
SERIES = [{"t": 0.0, "seen": 0, "bytes": 0, "accepted": 0, "dropped": 0, "continued": 0,
           "errors": 0}] + [
    {"t": t, "seen": 100 * t, "bytes": 6000 * t, "accepted": 100 * min(t, 1) + 50 * max(t - 1, 0),
     "dropped": 50 * max(t - 1, 0), "continued": 0, "errors": 0} for t in (0.5, 1.0, 1.5, 2.0)]


def test_rates_from_cumulative_samples():
    r = plots.rates(SERIES)
    assert r["t"] == [0.5, 1.0, 1.5, 2.0]
    assert r["accepted"] == [100, 100, 50, 50]
    assert r["dropped"] == [0, 0, 50, 50]
    assert r["bytes"] == [6000] * 4


def test_figure_is_a_png_of_the_requested_size():
    png = plots.figure_png(SERIES, "demo", width=8, height=3, dpi=50)
    img = imread(io.BytesIO(png), format="png")
    assert img.shape[:2] == (150, 400)
    assert plots.figure_png([])[:4] == b"\x89PNG"          # no samples: still a figure


def summary(**kw):
    stats = {"seen": 200, "bytes": 12000, "accepted": 150, "dropped": 50, "continued": 0,
             "modified": 0, "errors": 3, "queue_drops": 0}
    return RunSummary(name="demo", backend="nfqueue", seconds=2.04, stats=stats, series=SERIES,
                      errors=[{"message": "attempt to index field 'missing'", "line": 3,
                               "count": 3}],
                      cell_lines=CELL, traffic=[{"flow": "udp client → server:9000", "sent": 200,
                                                 "received": 150, "elapsed": 1.99}], **kw)


def test_summary_table_in_every_static_format():
    s = summary()
    text = repr(s)
    assert text.startswith("packetscript 'demo' on nfqueue, 2.0 s: seen 200, accepted 150, "
                           "dropped 50")
    assert "traffic udp client → server:9000: sent 200, received 150, elapsed 1.99" in text
    assert "cell line 3: attempt to index field 'missing' (3 packets)" in text
    assert "3 |   local x = p.missing.field" in text
    html = s._repr_html_()
    assert "<td>150</td>" in html and "<th>queue drops</th>" in html
    assert "local x = p.missing.field" in html
    md = s._repr_markdown_()
    assert "| 200 | 150 | 50 | 0 | 0 | 3 | 0 |" in md
    assert s.as_dict()["dropped"] == 50 and s.figure_bundle()["image/png"]


def test_dashboard_update_sets_widget_values():
    stops = []
    d = Dashboard("demo · nfqueue", CELL, on_stop=lambda: stops.append(1))
    view = {"status": "running", "elapsed": 1.5, "stats": summary().stats, "series": SERIES,
            "recent": [{"t": 1.2, "summary": "UDP 10.77.0.1:40000 > 10.77.0.2:9000 len 60",
                        "verdict": "drop", "changed": ["ip.daddr", "ip.check"], "error": None}],
            "errors": summary().errors}
    d.update(view, with_plot=False)
    assert d.plot.value == b""                         # figures only on plot ticks
    assert "running" in d.header.value and "1.5 s" in d.header.value
    assert ">150<" in d.counters.value and ">50<" in d.counters.value
    assert "10.77.0.1:40000" in d.recent.value and "ip.daddr, ip.check" in d.recent.value
    assert "cell line 3" in d.errors.value
    d.update(view, with_plot=True)
    assert d.plot.value[:4] == b"\x89PNG"
    d.stop_button.click()
    assert stops == [1]
    d.finish("ended: stopped")
    assert d.stop_button.disabled and "ended: stopped" in d.header.value
    assert "live widgets need a running kernel" in d.bundle()["text/plain"]


def test_blocking_runs_show_a_disabled_stop_button():
    d = Dashboard("demo", CELL, on_stop=None, stop_note="interrupt the kernel to end early")
    assert d.stop_button.disabled and "interrupt" in d.stop_button.tooltip


def test_packets_that_passed_unjudged_are_shown_beside_the_verdicts():
    s = summary()
    s.stats = dict(s.stats, passed_unjudged=4321, queue_drops=17)
    assert "queue_drops 17, passed_unjudged 4321" in repr(s)
    assert "<th>passed unjudged</th>" in s._repr_html_() and "<td>4321</td>" in s._repr_html_()
    assert "| 3 | 17 | 4321 |" in s._repr_markdown_()
    assert s.as_dict()["passed_unjudged"] == 4321
    d = Dashboard("demo · nfqueue", CELL)
    d.update({"status": "running", "elapsed": 1.0, "stats": s.stats, "series": SERIES,
              "recent": [], "errors": []}, with_plot=False)
    assert ">4321<" in d.counters.value and "passed unjudged" in d.counters.value
