"""The dashboard widgets, the figure and the static summary, from recorded run data."""
from __future__ import annotations

import io
import re

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


def test_rates_stop_at_the_runs_span():
    # samples taken while the queue drained after a 1.5-s run are not part of the run
    r = plots.rates(SERIES, span=1.5)
    assert r["t"] == [0.5, 1.0, 1.5]


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
    assert "traffic udp client → server:9000: sent 200, received 150, lost 50 (25%)" in text
    assert "cell line 3: attempt to index field 'missing' (3 packets)" in text
    assert "3 |   local x = p.missing.field" in text
    html = s._repr_html_()
    assert ">150</td>" in html and ">queue drops</th>" in html
    assert "local x = p.missing.field" in html
    md = s._repr_markdown_()
    assert "| 200 | 150 | 50 | 0 | 0 | 3 | 0 |" in md
    assert s.as_dict()["dropped"] == 50 and s.figure_bundle()["image/png"]


def test_traffic_results_in_plain_words():
    from kernel_magic.summary import describe_flow
    udp = {"flow": "udp client → server:9000", "sent": 600, "sent_ok": 600, "received": 400,
           "missing": list(range(200)), "missing_count": 200, "duplicates": 0, "reordered": 3,
           "elapsed": 5.99, "rate": 100.1}
    assert describe_flow(udp) == ("udp client → server:9000: sent 600, received 400, "
                                  "lost 200 (33%), 3 out of order")
    ping = {"flow": "ping client → server", "sent": 4, "received": 3, "lost": [2],
            "rtt_ms": [0.1, 0.2, 0.3]}
    assert describe_flow(ping).startswith("ping client → server: sent 4, received 3, lost 1 (25%)")
    tcp = {"flow": "tcp client → server:7000", "connections": 3, "ok": 2, "failed": 1,
           "results": []}
    assert describe_flow(tcp) == "tcp client → server:7000: 2 of 3 connections echoed"
    failed = {"flow": "udp client → server:9000", "error": "LabError: no lab"}
    assert describe_flow(failed) == "udp client → server:9000: failed: LabError: no lab"


def test_counters_a_backend_adds_later_are_shown():
    s = summary()
    s.stats.update(unjudged=4, restarts=0)
    assert "unjudged 4" in repr(s) and "restarts" not in repr(s)      # shown while not zero
    assert ">unjudged</th>" in s._repr_html_()


def test_dashboard_update_sets_widget_values():
    stops = []
    d = Dashboard("demo · nfqueue", CELL, on_stop=lambda: stops.append(1))
    boom = "attempt to call a nil value (field 'frobnicate') " + "x" * 150
    recent = [{"t": 1.0, "summary": "UDP 10.77.0.1:40000 > 10.77.0.2:9000 len 60",
               "verdict": "continue", "changed": ["ip.daddr", "ip.check"],
               "changes": ["ip.daddr 10.77.0.2 → 10.77.0.9", "checksums updated (ip.check)"],
               "error": None}] + [
        {"t": 1.1 + i / 100, "summary": f"UDP 10.77.0.1:{40001 + i} > 10.77.0.2:9000 len 60",
         "verdict": "drop", "changed": [], "error": boom} for i in range(12)]
    view = {"status": "running", "clock": "1.5 s of 2 s", "stats": summary().stats,
            "series": SERIES, "recent": recent, "errors": summary().errors}
    d.update(view, with_plot=False)
    assert d.plot_box.children == ()                   # no empty image before the first figure
    assert "running" in d.header.value and "1.5 s of 2 s" in d.header.value
    assert ">150<" in d.counters.value and ">50<" in d.counters.value
    assert "ip.daddr 10.77.0.2 → 10.77.0.9" in d.recent.value
    assert d.recent.value.count("frobnicate") == 2     # one folded row: its text and its tooltip
    assert "×12" in d.recent.value and "and 11 more like it" in d.recent.value
    assert "padding" in d.recent.value
    assert "cell line 3" in d.errors.value
    d.update(view, with_plot=True)
    assert d.plot.value[:4] == b"\x89PNG" and d.plot_box.children == (d.plot,)
    d.stop_button.click()
    assert stops == [1]
    d.finish("ended: stopped")
    assert d.stop_button.disabled and d.stop_button.button_style == ""
    assert "ended: stopped" in d.header.value
    assert "replace it when it ends" in d.bundle()["text/plain"]
    d.close()
    assert d.widget.comm is None and d.plot.comm is None and d.recent.comm is None


def test_blocking_runs_show_how_to_end_them_instead_of_a_button():
    d = Dashboard("demo", CELL, on_stop=None, stop_note="interrupt the kernel (■) to end early")
    texts = [c.value for c in d.widget.children[1].children if hasattr(c, "value")]
    assert any("interrupt the kernel" in t for t in texts)
    assert d.stop_button not in d.widget.children[1].children


def test_packets_that_passed_unjudged_are_shown_beside_the_verdicts():
    s = summary()
    s.stats = dict(s.stats, passed_unjudged=4321, queue_drops=17)
    assert "queue_drops 17, passed_unjudged 4321" in repr(s)
    html = s._repr_html_()
    assert re.search(r"<th[^>]*>passed unjudged</th>", html) and re.search(r"<td[^>]*>4321</td>", html)
    assert "| 3 | 17 | 4321 |" in s._repr_markdown_()
    assert s.as_dict()["passed_unjudged"] == 4321
    d = Dashboard("demo · nfqueue", CELL)
    d.update({"status": "running", "elapsed": 1.0, "stats": s.stats, "series": SERIES,
              "recent": [], "errors": []}, with_plot=False)
    assert ">4321<" in d.counters.value and "passed unjudged" in d.counters.value
