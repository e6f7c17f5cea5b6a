"""The traffic figure, drawn with matplotlib's Agg canvas (no pyplot, no display side effects).

The same drawing serves the live dashboard (as PNG bytes set on an Image widget) and the
static summary written into the notebook when a run ends.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

VERDICT_COLOURS = {"accepted": "#2e7d32", "dropped": "#c62828", "continued": "#1565c0"}


def rates(series: list[dict]) -> dict[str, list[float]]:
    """Per-interval rates from cumulative samples: time, packets/s per verdict, bytes/s."""
    out = {"t": [], "bytes": [], "errors": [], **{k: [] for k in VERDICT_COLOURS}}
    for prev, cur in zip(series, series[1:]):
        dt = cur["t"] - prev["t"]
        if dt <= 1e-6:
            continue
        out["t"].append(cur["t"])
        for key in list(VERDICT_COLOURS) + ["bytes", "errors"]:
            out[key].append(max(0, cur.get(key, 0) - prev.get(key, 0)) / dt)
    return out


def figure_png(series: list[dict], title: str = "", *, width: float = 8.0,
               height: float = 3.2, dpi: int = 80) -> bytes:
    """Packets/s by verdict (left) and bytes/s (right) over the run's time, as PNG bytes."""
    r = rates(series)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_p, ax_b = fig.subplots(1, 2)
    for key, colour in VERDICT_COLOURS.items():
        if any(r[key]):
            ax_p.plot(r["t"], r[key], label=key, color=colour, linewidth=1.6)
    if any(r["errors"]):
        ax_p.plot(r["t"], r["errors"], label="errors", color="#6a1b9a", linestyle="--")
    ax_p.set_title("packets/s by verdict", fontsize=10)
    ax_p.set_xlabel("time (s)")
    if ax_p.lines:
        ax_p.legend(fontsize=8, loc="best")
    ax_b.plot(r["t"], r["bytes"], color="#455a64", linewidth=1.6)
    ax_b.set_title("bytes/s seen", fontsize=10)
    ax_b.set_xlabel("time (s)")
    for ax in (ax_p, ax_b):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if not r["t"]:
            ax.text(0.5, 0.5, "no samples yet", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
