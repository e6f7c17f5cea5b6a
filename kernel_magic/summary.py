"""The static record of a finished run: a figure and a table, as ordinary cell output.

A saved notebook, nbconvert's HTML and GitHub's viewer show these (image/png, text/html,
text/markdown, text/plain), unlike widgets, which need a live kernel.
"""
from __future__ import annotations

import base64
import dataclasses
import html

from kernel_magic import lua_errors, plots

# Always shown, in this order. Any other number a backend reports in its stats (e.g. a
# counter added later) is shown after these while it is not zero, unless it is named here
# as not a packet counter (times, or parts of a sum already shown).
COUNTERS = ("seen", "accepted", "dropped", "continued", "modified", "errors", "queue_drops",
            "passed_unjudged")
NOT_COUNTERS = {"bytes", "t", "first_t", "last_t", "queued_total", "queue_backlog",
                "queue_dropped", "user_dropped"}


def counter_keys(stats: dict) -> list[str]:
    extra = sorted(k for k, v in stats.items()
                   if k not in COUNTERS and k not in NOT_COUNTERS and not k.endswith("_t")
                   and _is_number(v) and v)
    return list(COUNTERS) + extra


def counter_label(key: str) -> str:
    return key.replace("_", " ")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass
class RunSummary:
    name: str
    backend: str
    seconds: float
    stats: dict
    series: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)      # {"message", "line", "count"}
    cell_lines: list = dataclasses.field(default_factory=list)
    traffic: list = dataclasses.field(default_factory=list)     # one dict per flow
    notes: list = dataclasses.field(default_factory=list)

    def count(self, key: str) -> int | None:
        """A counter, or None where the backend cannot know it (the kernel backend's rule
        counters do not tell accepted from dropped, nor see changed bytes or errors)."""
        value = self.stats.get(key)
        if value is None:
            return None if self.backend == "kernel" else 0
        return int(value)

    def shown(self, key: str) -> str:
        value = self.count(key)
        return "–" if value is None else str(value)

    def counters(self) -> list[str]:
        return counter_keys(self.stats)

    def as_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "seconds": round(self.seconds, 3),
                **{k: self.count(k) for k in self.counters()}, "bytes": self.count("bytes"),
                "errors_by_line": self.errors, "traffic": self.traffic}

    def figure_png(self) -> bytes:
        return plots.figure_png(self.series, title=f"{self.name} ({self.backend})",
                                span=self.seconds, empty="too short for a rate over time")

    def figure_bundle(self) -> dict:
        """The figure as display data, with a text description for text-only viewers."""
        return {"image/png": base64.b64encode(self.figure_png()).decode("ascii"),
                "text/plain": f"[figure: packets/s by verdict and bytes/s of {self.name!r}]"}

    def _title(self) -> str:
        return f"packetscript {self.name!r} on {self.backend}, {self.seconds:.1f} s"

    def _error_lines(self) -> list[str]:
        return [lua_errors.describe(f"{e['message']} ({e['count']} packets)", e.get("line"),
                                    self.cell_lines) for e in self.errors]

    def _traffic_lines(self) -> list[str]:
        return [describe_flow(row) for row in self.traffic]

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {self.shown(k)}" for k in self.counters())
        lines = [f"{self._title()}: {counts}"]
        lines += [f"traffic {t}" for t in self._traffic_lines()]
        lines += [f"error at {e}" for e in self._error_lines()]
        lines += self.notes
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        keys = self.counters()
        pad = "padding:3px 12px;text-align:right"
        head = "".join(f"<th style='{pad}'>{counter_label(k)}</th>" for k in keys)
        cells = "".join(f"<td style='{pad}'>{self.shown(k)}</td>" for k in keys)
        parts = [f"<b>{html.escape(self._title())}</b>",
                 f"<table class='packetscript-summary'><tr>{head}</tr><tr>{cells}</tr></table>"]
        if self.traffic:
            items = "".join(f"<li>{html.escape(t)}</li>" for t in self._traffic_lines())
            parts.append(f"traffic:<ul>{items}</ul>")
        if self.errors:
            items = "".join(f"<li><pre>{html.escape(e)}</pre></li>" for e in self._error_lines())
            parts.append(f"script errors:<ul>{items}</ul>")
        parts += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        return "\n".join(parts)

    def _repr_markdown_(self) -> str:
        keys = self.counters()
        head = "| " + " | ".join(counter_label(k) for k in keys) + " |"
        rule = "|" + "---:|" * len(keys)
        row = "| " + " | ".join(self.shown(k) for k in keys) + " |"
        parts = [f"**{self._title()}**", "", head, rule, row, ""]
        parts += [f"- traffic {t}" for t in self._traffic_lines()]
        for e in self._error_lines():
            parts += ["- script error:", "", "```", e, "```"]
        parts += [f"{n}  " for n in self.notes]
        return "\n".join(parts)

    def html_with_figure(self) -> str:
        """Figure and table in one HTML block (for a dashboard that must show the result
        itself: a page reloaded since the cell ran no longer links the cell's outputs)."""
        png = base64.b64encode(self.figure_png()).decode("ascii")
        return (f"<div><img alt='figure of {html.escape(self.name)}' style='max-width:100%' "
                f"src='data:image/png;base64,{png}'/></div>\n{self._repr_html_()}")

    def display(self) -> None:
        """Write the figure and the table as ordinary outputs of the current cell."""
        from IPython.display import display
        display(self.figure_bundle(), raw=True)
        display(self)


# Keys of the traffic generators' results that describe_flow puts into words itself.
_WORDED = {"flow", "sent", "sent_ok", "received", "missing", "missing_count", "lost",
           "duplicates", "reordered", "elapsed", "rate", "rtt_ms", "connections", "ok",
           "failed", "results", "error"}


def describe_flow(row: dict) -> str:
    """One flow's outcome in plain words: ``udp client → server:9000: sent 600, received
    400, lost 200 (33%)``."""
    parts = []
    if "connections" in row:                                   # tcp echo round trips
        parts.append(f"{row.get('ok', 0)} of {row['connections']} connections echoed")
    elif "sent" in row:
        sent = int(row["sent"])
        parts.append(f"sent {sent}")
        if "received" in row:
            received = int(row["received"])
            lost = row.get("missing_count", row.get("lost"))
            if isinstance(lost, (list, tuple)):
                lost = len(lost)
            lost = max(0, sent - received) if lost is None else int(lost)
            share = f" ({100 * lost / sent:.0f}%)" if sent else ""
            parts += [f"received {received}", f"lost {lost}{share}"]
        if row.get("duplicates"):
            parts.append(f"{row['duplicates']} duplicated")
        if row.get("reordered"):
            parts.append(f"{row['reordered']} out of order")
        rtts = row.get("rtt_ms")
        if isinstance(rtts, list) and rtts:
            parts.append(f"round trip {sorted(rtts)[len(rtts) // 2]:.2f} ms (median)")
    for key, value in row.items():
        if key not in _WORDED and value not in (None, "", 0):
            parts.append(f"{counter_label(key)} {_fmt(value)}")
    if row.get("error"):
        parts.append(f"failed: {row['error']}")
    return f"{row.get('flow', 'traffic')}: {', '.join(parts) or 'no result'}"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
