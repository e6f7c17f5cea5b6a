"""The traffic figure, drawn with matplotlib's Agg canvas (no pyplot, no display side effects).

The same drawing serves the live dashboard (as PNG bytes set on an Image widget) and the
static summary written into the notebook when a run ends.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

VERDICT_COLOURS = {"accepted": "#2e7d32", "dropped": "#c62828", "continued": "#1565c0"}
ERRORS_COLOUR = "#ff8f00"       # amber: stands out on top of the red "dropped" line
MIN_DT = 0.2                    # shorter intervals are merged into the next one


def rates(series: list[dict], span: float | None = None) -> dict[str, list[float]]:
    """Per-interval rates from cumulative samples: time, packets/s per verdict, bytes/s.

    Samples after ``span`` (the run's own end: its --duration, or when it was stopped) are
    left out: what arrives later is the tail of the drain, not traffic of the run.
    """
    if span is not None:
        series = [s for s in series if s["t"] <= span + 1e-6]
    out = {"t": [], "bytes": [], "errors": [], **{k: [] for k in VERDICT_COLOURS}}
    prev = series[0] if series else None
    for cur in series[1:]:
        dt = cur["t"] - prev["t"]
        if dt < MIN_DT:
            # a sample right after the last one (the reading at the moment of drawing, the
            # last one at the end) would show a rate over a few ms: a false drop to zero
            continue
        out["t"].append(cur["t"])
        for key in list(VERDICT_COLOURS) + ["bytes", "errors"]:
            out[key].append(max(0, (cur.get(key) or 0) - (prev.get(key) or 0)) / dt)
        prev = cur
    return out


def figure_png(series: list[dict], title: str = "", *, span: float | None = None,
               width: float = 8.0, height: float = 3.0, dpi: int = 80,
               empty: str = "no samples yet") -> bytes:
    """Packets/s by verdict (left) and bytes/s (right) over the run's time, as PNG bytes."""
    r = rates(series, span)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_p, ax_b = fig.subplots(1, 2)
    for key, colour in VERDICT_COLOURS.items():
        if any(r[key]):
            ax_p.plot(r["t"], r[key], label=key, color=colour, linewidth=1.6, zorder=2)
    if any(r["errors"]):
        # drawn last and wider, dashed: visible even where it lies on the dropped line
        ax_p.plot(r["t"], r["errors"], label="script errors", color=ERRORS_COLOUR,
                  linestyle=(0, (4, 3)), linewidth=2.4, zorder=3)
    ax_p.set_title("packets by verdict", fontsize=10)
    ax_p.set_ylabel("packets/s")
    if ax_p.lines:
        ax_p.legend(fontsize=8, loc="best")
    ax_b.plot(r["t"], r["bytes"], color="#455a64", linewidth=1.6)
    ax_b.set_title("bytes seen by the script", fontsize=10)
    ax_b.set_ylabel("bytes/s")
    end = max([span or 0.0] + r["t"])
    for ax in (ax_p, ax_b):
        ax.set_xlabel("time since the run started (s)")
        top = max([y for line in ax.lines for y in line.get_ydata()] or [0])
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)     # headroom: no line on the frame
        if end > 0:
            ax.set_xlim(0, end)
        ax.grid(alpha=0.3)
        if not r["t"]:
            ax.text(0.5, 0.5, empty, ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    if title:
        fig.suptitle(title, fontsize=11)
    # fixed margins: tight_layout costs as much as the drawing itself
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.17, top=0.82 if title else 0.9,
                        wspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
