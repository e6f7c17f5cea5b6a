"""The live dashboard of one run: ipywidgets whose values the pump sets.

Nothing here starts threads or captures output: the pump (``kernel_magic.pump``) calls
:meth:`Dashboard.update` from the kernel's main thread a few times a second, and each call
only assigns widget values (and only those that changed, to keep comm traffic small).
The dashboard lives only while its run does: when the run ends the cell's output is
replaced by a static figure and table and :meth:`close` removes the widgets.
"""
from __future__ import annotations

import html
import time

import ipywidgets as w

from kernel_magic import lua_errors, plots
from kernel_magic.summary import counter_keys, counter_label

RECENT_ROWS = 12
PLOT_EVERY = 0.9                # seconds between figures (a PNG costs ~50 ms)
ERROR_TEXT = 90                 # characters of an error shown in the packets table
_VERDICT_STYLE = {"accept": "color:#2e7d32", "drop": "color:#c62828", "continue": "color:#1565c0"}
_CELL = ("padding:2px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #eee;"
         "line-height:1.35")
# ipywidgets styles a disabled button only faintly; say it plainly
_STYLE = ("<style>.packetscript-dash .jupyter-button:disabled{opacity:.35;cursor:not-allowed;"
          "filter:grayscale(1)}</style>")


class Dashboard:
    def __init__(self, title: str, cell_lines: list[str], on_stop=None, stop_note: str = ""):
        self.cell_lines = cell_lines
        self._title = title
        self.header = w.HTML(self._header_html("starting…", None))
        self.counters = w.HTML()
        # no Image until the first figure exists: an empty Image shows a broken-image icon
        self.plot_box = w.Box(layout=w.Layout(min_height="0px"))
        self.plot = w.Image(format="png", layout=w.Layout(max_width="680px"))
        self.recent = w.HTML()
        self.errors = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="Stop this run and write its summary")
        if on_stop is None:
            self.stop_button.disabled = True
            controls = [self.header, w.HTML(f"<span style='color:#666;margin-left:1em'>"
                                            f"{html.escape(stop_note)}</span>")]
        else:
            self.stop_button.on_click(lambda _b: on_stop())
            controls = [self.header, self.stop_button]
        self.widget = w.VBox([
            w.HTML(_STYLE),
            w.HBox(controls, layout=w.Layout(align_items="center")),
            self.counters, self.plot_box,
            w.Accordion(children=[self.recent], titles=("recent packets",), selected_index=0),
            self.errors,
        ])
        self.widget.add_class("packetscript-dash")
        self._plotted = (-1, 0.0)       # (samples drawn, when)

    def bundle(self) -> dict:
        """The widget's display data, with a text fallback for static viewers."""
        data = self.widget._repr_mimebundle_()
        data = data[0] if isinstance(data, tuple) else data
        data["text/plain"] = (f"PacketScript dashboard for {self._title} (live widgets need a "
                              "running kernel; the run's figure and table replace it when it ends)")
        return data

    def update(self, view: dict, *, with_plot: bool) -> None:
        """``view``: status, clock, stats, series, recent, errors, span (see Run.view)."""
        self._set(self.header, self._header_html(view["status"], view.get("clock")))
        self._set(self.counters, _counter_table(view["stats"]))
        self._set(self.recent, _recent_table(view["recent"]))
        self._set(self.errors, _errors_html(view["errors"], self.cell_lines))
        samples, drawn_at = len(view["series"]), time.monotonic()
        if with_plot and samples != self._plotted[0] and (
                samples <= 3 or drawn_at - self._plotted[1] >= PLOT_EVERY):
            # a new figure when there are new samples: the first ones at once, then ~1/s
            self._plotted = (samples, drawn_at)
            png = plots.figure_png(view["series"], span=view.get("span"))
            if png != self.plot.value:
                self.plot.value = png
            if not self.plot_box.children:
                self.plot_box.children = (self.plot,)

    def finish(self, status: str) -> None:
        self.stop_button.disabled = True
        self.stop_button.button_style = ""
        self._set(self.header, self._header_html(status, None))

    def show_final(self, summary, reason: str) -> None:
        """Put the run's figure and table inside the dashboard itself (see html_with_figure)."""
        self.finish(f"ended: {reason}")
        self.widget.children = (self.widget.children[0], self.widget.children[1],
                                w.HTML(summary.html_with_figure()))

    def close(self) -> None:
        """Remove every widget of the dashboard from the kernel and the page."""
        for widget in (self.widget, *self._descendants(self.widget)):
            widget.close()

    @staticmethod
    def _descendants(widget):
        for child in getattr(widget, "children", ()):
            yield child
            yield from Dashboard._descendants(child)

    def _header_html(self, status: str, clock: str | None) -> str:
        clock_html = f" · <span style='font-variant-numeric:tabular-nums'>{clock}</span>" \
            if clock else ""
        return f"<b>{html.escape(self._title)}</b> — {html.escape(status)}{clock_html}"

    @staticmethod
    def _set(widget, value) -> None:
        if widget.value != value:
            widget.value = value


def _shown(stats: dict, key: str) -> str:
    # A counter the backend cannot know (absent from the kernel's rule counters) is a dash.
    value = stats.get(key)
    return "–" if value is None else str(int(value))


def _counter_table(stats: dict) -> str:
    cells = "".join(
        f"<td style='padding:2px 12px;text-align:center'><div style='font-size:1.4em'>"
        f"{_shown(stats, k)}</div><div style='color:#666'>{counter_label(k)}</div></td>"
        for k in counter_keys(stats))
    return f"<table><tr>{cells}</tr></table>"


def _fold(rows: list[dict]) -> list[tuple[dict, int, float]]:
    """Newest first; neighbours failing with the same error become one row with a count."""
    out: list[tuple[dict, int, float]] = []
    for r in reversed(rows):
        if out and r.get("error") and out[-1][0].get("error") == r.get("error") \
                and out[-1][0].get("verdict") == r.get("verdict"):
            first, n, _oldest = out[-1]
            out[-1] = (first, n + 1, r.get("t", 0))
        else:
            out.append((r, 1, r.get("t", 0)))
    return out


def _recent_table(recent: list[dict]) -> str:
    if not recent:
        return "<i>no packets yet</i>"
    rows = []
    shown: set[str] = set()
    for r, n, oldest in _fold(recent)[:RECENT_ROWS][::-1]:      # oldest first, to see repeats
        style = _VERDICT_STYLE.get(r.get("verdict"), "")
        changes = r.get("changes") or r.get("changed") or []
        changes = changes if isinstance(changes, list) else [str(changes)]
        err = r.get("error") or ""
        short = err if len(err) <= ERROR_TEXT else err[:ERROR_TEXT - 1] + "…"
        if err and err in shown:
            short = "same error as below"          # said once in full, in its first row
        shown.add(err)
        t = f"{r.get('t', 0):.2f}" if n == 1 else f"{oldest:.2f}–{r.get('t', 0):.2f}"
        packet = html.escape(r.get("summary", ""))
        if n > 1:
            packet += f" <span style='color:#666'>and {n - 1} more like it</span>"
        count = f" <b>×{n}</b>" if n > 1 else ""
        rows.append(
            f"<tr><td style='{_CELL};white-space:nowrap'>{t}</td>"
            f"<td style='{_CELL};white-space:nowrap'><code>{packet}</code>"
            + "".join(f"<div style='color:#1565c0'>{'' if c.startswith('checksums') else 'changed: '}"
                      f"{html.escape(c)}</div>" for c in changes)
            + f"</td><td style='{_CELL};{style}'>{html.escape(str(r.get('verdict')))}</td>"
            f"<td style='{_CELL};color:#c62828;min-width:14em' title='{html.escape(err)}'>"
            f"{html.escape(short)}{count}</td></tr>")
    rows.reverse()                                               # newest first again
    head = "".join(f"<th style='{_CELL};white-space:nowrap'>{h}</th>" for h in
                   ("time (s)", "packet as it arrived, and what the script changed (before → "
                    "after)", "verdict", "error"))
    return (f"<table style='border-collapse:collapse;font-size:0.92em'><tr>{head}</tr>"
            f"{''.join(rows)}</table>")


def _errors_html(errors: list[dict], cell_lines: list[str]) -> str:
    if not errors:
        return ""
    items = "".join(
        "<li><pre style='margin:0'>"
        + html.escape(lua_errors.describe(f"{e['message']} ({e['count']} packets)",
                                          e.get("line"), cell_lines))
        + "</pre></li>" for e in errors)
    return f"<b style='color:#c62828'>script errors</b><ul>{items}</ul>"
