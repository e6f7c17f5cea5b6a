"""One attached script: its backend handle, its traffic, its dashboard and its end.

A run ends when its duration is reached, when its capture has been played (``--pcap``),
when it is stopped (button, ``%packetscript stop``, ``%packetscript down``, a kernel
interrupt) or when a cell with other hook options takes its name. Its final numbers are
read before the handle is detached, then kept for the summary.

Its clock is wall time since its traffic started; its span (what the summary reports and
the figure shows) is that time up to its end, at most its --duration: the drain after the
traffic is not part of the run.
"""
from __future__ import annotations

import threading
import time

from kernel_magic.options import RunOptions
from kernel_magic.summary import RunSummary
from packetscript_lab.core import flows as flows_mod
from packetscript_lab.runs import COUNTER_NAMES


class Run:
    def __init__(self, name: str, options: RunOptions, source: str, cell_lines: list[str],
                 backend: str, handle):
        self.name = name
        self.options = options
        self.source = source
        self.cell_lines = cell_lines
        self.backend = backend
        self.handle = handle
        self.started = time.monotonic()
        self.started_wall = time.time()       # the lab time-stamps samples with the wall clock
        self.deadline = None if options.duration is None else self.started + options.duration
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.dashboard = None
        self.blocking = False                 # a cell is waiting for this run to end
        self.outputs = None                   # the CellOutputs of the cell showing this run
        self.notes: list[str] = []
        self._traffic_thread: threading.Thread | None = None
        self._traffic_results: list[dict] = []
        self._final: dict | None = None
        self._last: dict | None = None        # last numbers read, kept if the backend dies
        self._lock = threading.Lock()

    # --- traffic ----------------------------------------------------------------------
    def start_traffic(self, work, label: str) -> None:
        """Run ``work()`` (returning result dicts) in a worker; results go to the summary."""
        def target():
            try:
                results = work()
            except Exception as exc:  # shown in the summary, never printed from here
                results = [{"flow": label, "error": f"{type(exc).__name__}: {exc}"}]
            with self._lock:
                self._traffic_results.extend(results)
        self._traffic_thread = threading.Thread(target=target, name=f"traffic-{self.name}",
                                                daemon=True)
        self._traffic_thread.start()

    def drive_flows(self, lab, flows, seconds: float) -> None:
        def work():     # the summary shows numbers and words, not sequence-number lists
            return [{k: v for k, v in row.items() if isinstance(v, (int, float, str))}
                    for row in flows_mod.drive(lab, flows, seconds)]
        self.start_traffic(work, "; ".join(map(str, flows)))

    def traffic_done(self) -> bool:
        return self._traffic_thread is None or not self._traffic_thread.is_alive()

    def wait_traffic(self, timeout: float) -> None:
        if self._traffic_thread is not None:
            self._traffic_thread.join(timeout)

    # --- state ------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.ended_at is None

    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started

    def span(self) -> float:
        """Seconds of the run's own traffic: until it ended, at most its --duration."""
        end = self.ended_at or time.monotonic()
        if self.deadline is not None:
            end = min(end, self.deadline)
        return max(0.0, end - self.started)

    def due(self) -> str | None:
        """Why the run should end now (its last packets counted), or None."""
        if self.deadline is not None and time.monotonic() >= self.deadline \
                and self.traffic_done():
            played = getattr(self.handle, "played_all", None)
            if self.backend == "replay" and self.options.pcap is None and played is not None \
                    and not played.is_set():
                return None     # traffic made for exactly this duration: judge all of it
            return "duration reached"
        if self.options.pcap is None and self.options.pace != "fast":
            return None
        if self.backend == "replay":
            played = getattr(self.handle, "played_all", None)
            if played is not None and played.is_set():
                return "capture played to the end" if self.options.pcap else \
                    "all packets played"
        elif self.options.pcap is not None and self._traffic_thread is not None \
                and self.traffic_done():
            return "capture sent to the end"
        return None

    def view(self) -> dict:
        """What the dashboard shows, read from the backend (or the final numbers)."""
        if self._final is not None:
            data = self._final
        else:
            data = self._read()
        status = "running" if self.active else f"ended: {self.end_reason}"
        if self.active and self.deadline is not None and time.monotonic() > self.deadline:
            status = "counting the last packets"
        if self.active and getattr(self.handle, "failure", None):
            status = f"failed: {self.handle.failure}"
        clock = f"{self.span():.1f} s"
        if self.options.duration is not None:
            clock += f" of {self.options.duration:g} s"
        return {"status": status, "elapsed": self.elapsed(), "clock": clock,
                "span": self.span() if not self.active else self.options.duration, **data}

    def _read(self) -> dict:
        h = self.handle
        series, recent = h.series(), h.recent()
        if self.backend != "replay":
            # Lab samples carry wall-clock times and may include an earlier run of this name.
            t0 = self.started_wall
            series = [dict(s, t=s["t"] - t0) for s in series if s["t"] >= t0 - 0.01]
            if series and series[0]["seen"]:
                zero = {k: 0 for k in _COUNTS if k in series[0]}
                series.insert(0, dict(series[0], t=0.0, **zero))
            recent = [dict(r, t=r["t"] - t0) for r in recent]
        errors = h.errors()
        self._last = {"stats": h.stats(), "series": series, "recent": recent, "errors": errors}
        return self._last

    # --- changes ----------------------------------------------------------------------
    def replace(self, source: str, cell_lines: list[str], replacement) -> None:
        """Swap the script in place; ``replacement`` is what the backend's replace() takes."""
        self.handle.replace(replacement)
        self.source = source
        self.cell_lines = cell_lines

    def stop(self, reason: str) -> bool:
        """End the run; False if it had already ended."""
        with self._lock:
            if self.ended_at is not None:
                return False
            self.ended_at = time.monotonic()
            self.end_reason = reason
        try:
            self._final = self._read()
        except Exception as exc:
            self._final = self._last or {"stats": {}, "series": [], "recent": [], "errors": []}
            self.notes.append(f"final numbers unavailable ({type(exc).__name__}: {exc}); "
                              "these are the last ones read")
        try:
            final_stats = self.handle.detach()
        except Exception as exc:
            self.notes.append(f"detach failed: {type(exc).__name__}: {exc}")
        else:
            # a live detach drains the queue first and returns the counters after that
            if isinstance(final_stats, dict) and final_stats:
                self._final = dict(self._final, stats={**self._final["stats"], **final_stats})
        return True

    def summary(self) -> RunSummary:
        data = self._final if self._final is not None else self._read()
        with self._lock:
            traffic = list(self._traffic_results)
        notes = list(self.notes)
        if self.end_reason and self.end_reason != "duration reached":
            notes.insert(0, f"run ended: {self.end_reason}")
        if getattr(self.handle, "failure", None):
            notes.append(f"replay worker failed: {self.handle.failure}")
        return RunSummary(name=self.name, backend=self.backend, seconds=self.span(),
                          stats=data["stats"], series=data["series"], errors=data["errors"],
                          cell_lines=self.cell_lines, traffic=traffic, notes=notes)


_COUNTS = (*COUNTER_NAMES, "queue_drops", "passed_unjudged")   # zero when a run starts
