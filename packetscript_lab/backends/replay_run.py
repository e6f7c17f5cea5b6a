"""The replay backend as a live run: a Judge (a Script in its own watched process) fed
packets in a worker thread at their pace.

It is a run handle (``packetscript_lab.runs.RunHandle``) like a Lab attachment, so the
dashboard and the summary do not care which backend produced the numbers. Pace ``recorded``
(the default) plays packets at their recorded time offsets (gaps longer than one second are
shortened to one second), so the dashboard shows rates as they were offered; pace ``fast``
plays them back to back.
``played_all`` is set whenever every packet handed in so far has been judged.

The worker only computes; it never prints or touches widgets.
"""
from __future__ import annotations

import collections
import inspect
import threading
import time

from packetscript_lab.judge import Judge
from packetscript_lab.script import Script
from packetscript_lab.runs import Counters, Recent, Replaced, entries_of

MAX_GAP = 1.0
PACES = ("recorded", "fast")
BATCH = 2000
RECENT = 50
MAX_KEPT = 100_000      # packets a recorded run keeps


class ReplayRun:
    """A script judging a capture's packets at their pace, in a worker thread."""

    backend = "replay"

    def __init__(self, name: str, script: Judge, frames, *, raw_ip: bool = False,
                 sample_interval: float = 0.5, pace: str = "recorded",
                 keep: bool = False):
        """``frames``: (time offset in seconds, bytes) pairs sorted by time."""
        self.name = name
        self._script = script
        self._raw_ip = raw_ip
        self._interval = sample_interval
        if pace not in PACES:
            raise ValueError(f"pace {pace!r}: use one of {', '.join(PACES)}")
        self.pace = pace
        self._pending = collections.deque(self._paced(frames))
        self.total = len(self._pending)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._counts = Counters()
        self._series: list[dict] = [self._sample(0.0)]
        self._recent = Recent(RECENT)
        self._replaced = Replaced()       # errors and wall-clock counts of replaced scripts
        self._t0 = time.monotonic()
        self.played_all = threading.Event()
        # keep: every packet's bytes and result, for record() (packetscript_lab.recording)
        self._kept: list | None = [] if keep else None
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._work, name=f"replay-{name}", daemon=True)
        self._thread.start()

    # --- handle interface ------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {**self._numbers(), **self._replaced.judge_counts(self._script)}

    def series(self) -> list[dict]:
        with self._lock:
            return list(self._series) + [self._sample()]

    def recent(self, limit: int | None = None) -> list[dict]:
        with self._lock:
            items = self._recent.items()
        return entries_of(items, limit)

    def errors(self) -> list[dict]:
        with self._lock:
            return self._replaced.all_errors(self._script)

    def output(self) -> list[str]:
        """Lines the script printed."""
        with self._lock:
            return self._replaced.all_output(self._script)

    def replace(self, source) -> None:
        """Swap the script between two packets: none is lost or run twice. ``source`` is
        Lua text (compiled with this run's options) or a compiled Judge or Script."""
        script = Judge(source, **_options(self._script)) if isinstance(source, str) else source
        with self._lock:
            old = self._script
            self._replaced.retire(old)
            self._script = script
            if self._kept is not None:
                self._kept.clear()        # from here on the record is the new script's
        _close(old)

    def record(self, directory, traffic=None):
        """Write a record (docs/records.md) of the packets played so far."""
        from packetscript_lab import recording
        if self._kept is None:
            raise recording.RecordError("this run keeps no packets: start it with --record DIR")
        with self._lock:
            entries, script = list(self._kept), self._script
        options = {k: getattr(script, k) for k in ("lua", "profile", "on_error", "budget",
                                                    "fix_checksums", "seed", "line_offset")}
        return recording.write(directory, script.source, entries, options=options,
                               backend="replay", traffic=traffic,
                               extra={"replaced": self._replaced.any})

    def inject(self, frames) -> None:
        """Play more packets (``%packetscript send``), starting now."""
        now = time.monotonic() - self._t0
        with self._lock:
            self._pending.extend((now + off, data) for off, data in self._paced(frames))
            self.total += len(frames)
            self.played_all.clear()
        self._wake.set()

    def detach(self) -> dict:
        """Stop playing (a second call changes nothing); the final stats."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        _close(self._script)
        return self.stats()

    def _paced(self, frames):
        if self.pace == "fast":
            return [(0.0, data) for _off, data in frames]
        return _shorten_gaps(frames)

    # --- worker ----------------------------------------------------------------------
    def _work(self) -> None:
        next_sample = self._interval
        try:
            while not self._stop.is_set():
                now = time.monotonic() - self._t0
                with self._lock:
                    # a bounded batch per lock hold: readers (the dashboard) are not starved
                    for _ in range(BATCH):
                        if not self._pending or self._pending[0][0] > now:
                            break
                        self._run_one(now, self._pending.popleft()[1])
                    if now >= next_sample:
                        self._series.append(self._sample())
                        next_sample = now + self._interval
                    if not self._pending:
                        self.played_all.set()
                    due = self._pending[0][0] if self._pending else next_sample
                self._wake.wait(max(0.0, min(due, next_sample) - now))
                self._wake.clear()
        except Exception as exc:  # kept for the dashboard/summary, never printed here
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._series.append(self._sample())
            self.played_all.set()

    def _run_one(self, now: float, data: bytes) -> None:
        script = self._script
        result = script.run_ip(data, ts=now) if self._raw_ip else script.run(data, ts=now)
        self._counts.add(len(data), result.verdict, result.modified, result.error,
                         result.eth_modified)
        eth = script.eth_header if self._raw_ip else b""
        if self._kept is not None and len(self._kept) < MAX_KEPT:
            from packetscript_lab.recording import Entry
            self._kept.append(Entry(eth + data, result.verdict,
                                    eth + result.data if result.modified else None,
                                    None if result.error is None else str(result.error), now))
        error = None if result.error is None else {0: result.error}
        self._recent.add_batch(now, [data], [result.data if result.modified else None],
                               [result.verdict], error or {}, [eth])

    def _numbers(self) -> dict:
        # Nothing waits in a queue and nothing passes unjudged: every packet is run.
        return {**self._counts.snapshot(), "queue_drops": 0, "passed_unjudged": 0}

    def _sample(self, t: float | None = None) -> dict:
        return {"t": time.monotonic() - self._t0 if t is None else t, **self._numbers()}


def _shorten_gaps(frames):
    """Shift offsets so no gap between packets exceeds MAX_GAP (long captures stay watchable)."""
    out, shift, last = [], 0.0, None
    for off, data in frames:
        if last is not None and off - last > MAX_GAP:
            shift += off - last - MAX_GAP
        last = off
        out.append((off - shift, data))
    return out


def _close(script) -> None:
    """Stop a Judge's process (a plain Script has none)."""
    close = getattr(script, "close", None)
    if close is not None:
        close()


def _options(script) -> dict:
    """The options ``script`` was compiled with, to compile its replacement alike."""
    names = [p.name for p in inspect.signature(Script.__init__).parameters.values()
             if p.kind is p.KEYWORD_ONLY]
    return {k: getattr(script, k) for k in names if hasattr(script, k)}
