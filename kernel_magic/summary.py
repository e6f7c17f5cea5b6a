"""The static record of a finished run: a figure and a table, as ordinary cell output.

A saved notebook, nbconvert's HTML and GitHub's viewer show these (image/png, text/html,
text/markdown, text/plain), unlike widgets, which need a live kernel.
"""
from __future__ import annotations

import base64
import dataclasses
import html

from kernel_magic import lua_errors, plots

COUNTERS = ("seen", "accepted", "dropped", "continued", "modified", "errors", "queue_drops",
            "passed_unjudged")


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

    def as_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "seconds": round(self.seconds, 3),
                **{k: self.count(k) for k in COUNTERS}, "bytes": self.count("bytes"),
                "errors_by_line": self.errors, "traffic": self.traffic}

    def figure_png(self) -> bytes:
        return plots.figure_png(self.series, title=f"{self.name} ({self.backend})")

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
        out = []
        for row in self.traffic:
            details = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()
                                if k != "flow" and (v or k in ("sent", "received")))
            out.append(f"{row['flow']}: {details}")
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {self.shown(k)}" for k in COUNTERS)
        lines = [f"{self._title()}: {counts}"]
        lines += [f"traffic {t}" for t in self._traffic_lines()]
        lines += [f"error at {e}" for e in self._error_lines()]
        lines += self.notes
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in COUNTERS)
        cells = "".join(f"<td>{self.shown(k)}</td>" for k in COUNTERS)
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
        head = "| " + " | ".join(k.replace("_", " ") for k in COUNTERS) + " |"
        rule = "|" + "---:|" * len(COUNTERS)
        row = "| " + " | ".join(self.shown(k) for k in COUNTERS) + " |"
        parts = [f"**{self._title()}**", "", head, rule, row, ""]
        parts += [f"- traffic {t}" for t in self._traffic_lines()]
        for e in self._error_lines():
            parts += ["- script error:", "", "```", e, "```"]
        parts += [f"{n}  " for n in self.notes]
        return "\n".join(parts)

    def display(self) -> None:
        """Write the figure and the table as ordinary outputs of the current cell."""
        from IPython.display import display
        display(self.figure_bundle(), raw=True)
        display(self)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
