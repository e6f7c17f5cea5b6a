"""The live dashboard of one run: ipywidgets whose values the pump sets.

Nothing here starts threads or captures output: the pump (``kernel_magic.pump``) calls
:meth:`Dashboard.update` from the kernel's main thread a few times a second, and each call
only assigns widget values (and only those that changed, to keep comm traffic small).
"""
from __future__ import annotations

import html

import ipywidgets as w

from kernel_magic import lua_errors, plots

COUNTERS = ("seen", "accepted", "dropped", "continued", "modified", "errors", "queue_drops",
            "passed_unjudged")
RECENT_ROWS = 12
_VERDICT_STYLE = {"accept": "color:#2e7d32", "drop": "color:#c62828", "continue": "color:#1565c0"}


class Dashboard:
    def __init__(self, title: str, cell_lines: list[str], on_stop=None, stop_note: str = ""):
        self.cell_lines = cell_lines
        self.header = w.HTML(f"<b>{html.escape(title)}</b> — starting")
        self.counters = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(max_width="680px"))
        self.recent = w.HTML()
        self.errors = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip=stop_note or "Stop this run and write its summary")
        if on_stop is None:
            self.stop_button.disabled = True
        else:
            self.stop_button.on_click(lambda _b: on_stop())
        self._title = title
        self.widget = w.VBox([
            w.HBox([self.header, self.stop_button]),
            self.counters, self.plot,
            w.Accordion(children=[self.recent], titles=("recent packets",), selected_index=0),
            self.errors,
        ])

    def bundle(self) -> dict:
        """The widget's display data, with a text fallback for static viewers."""
        data = self.widget._repr_mimebundle_()
        data = data[0] if isinstance(data, tuple) else data
        data["text/plain"] = (f"PacketScript dashboard for {self._title} (live widgets need a "
                              "running kernel; the summary below is static)")
        return data

    def update(self, view: dict, *, with_plot: bool) -> None:
        """``view``: status, elapsed, stats, series, recent, errors (see Run.view)."""
        self._set(self.header, f"<b>{html.escape(self._title)}</b> — {html.escape(view['status'])}"
                               f" · {view['elapsed']:.1f} s")
        self._set(self.counters, _counter_table(view["stats"]))
        self._set(self.recent, _recent_table(view["recent"]))
        self._set(self.errors, _errors_html(view["errors"], self.cell_lines))
        if with_plot:
            png = plots.figure_png(view["series"])
            if png != self.plot.value:
                self.plot.value = png

    def finish(self, status: str) -> None:
        self.stop_button.disabled = True
        self._set(self.header, f"<b>{html.escape(self._title)}</b> — {html.escape(status)}")

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
        f"<td style='padding:2px 10px;text-align:center'><div style='font-size:1.4em'>"
        f"{_shown(stats, k)}</div><div style='color:#666'>{k.replace('_', ' ')}</div></td>"
        for k in COUNTERS)
    return f"<table><tr>{cells}</tr></table>"


def _recent_table(recent: list[dict]) -> str:
    if not recent:
        return "<i>no packets yet</i>"
    rows = []
    for r in recent[-RECENT_ROWS:][::-1]:
        style = _VERDICT_STYLE.get(r.get("verdict"), "")
        changed = ", ".join(r.get("changed") or []) or ""
        err = r.get("error") or ""
        rows.append(
            f"<tr><td>{r.get('t', 0):.2f}</td><td><code>{html.escape(r.get('summary', ''))}</code>"
            f"</td><td style='{style}'>{html.escape(str(r.get('verdict')))}</td>"
            f"<td>{html.escape(changed)}</td><td>{html.escape(err)}</td></tr>")
    head = "<tr><th>t (s)</th><th>packet</th><th>verdict</th><th>changed</th><th>error</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _errors_html(errors: list[dict], cell_lines: list[str]) -> str:
    if not errors:
        return ""
    items = "".join(
        "<li><pre style='margin:0'>"
        + html.escape(lua_errors.describe(f"{e['message']} ({e['count']} packets)",
                                          e.get("line"), cell_lines))
        + "</pre></li>" for e in errors)
    return f"<b style='color:#c62828'>script errors</b><ul>{items}</ul>"
