"""The one pump that moves numbers from runs into dashboards.

Widget output from background threads gets lost and concurrent widget updates race, so a
single loop does all updates: an asyncio task on the kernel's event loop while cells are
idle, or the cell's own thread while a ``--duration`` cell waits. Both call :meth:`tick`.
Where there is no running event loop (a terminal IPython), a single daemon thread ticks.
"""
from __future__ import annotations

import asyncio
import threading

INTERVAL = 0.25         # seconds between counter/table updates (figures: see Dashboard)


class Pump:
    def __init__(self, session):
        self.session = session
        self._lock = threading.Lock()
        self._task = None
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Update every live dashboard; finish open-ended runs that ended meanwhile."""
        with self._lock:
            for run in list(self.session.runs.values()):
                reason = run.due() if run.active and not run.blocking else None
                if reason is not None:
                    self.session.finish(run, reason)
                    continue
                self.tick_one(run, with_plot=True)

    def tick_one(self, run, *, with_plot: bool) -> None:
        if run.active and run.dashboard is not None:
            try:
                run.dashboard.update(run.view(), with_plot=with_plot)
            except Exception as exc:  # a dead backend ends the run, visibly
                self.session.finish(run, f"backend failed: {type(exc).__name__}: {exc}")

    def _wanted(self) -> bool:
        return any(r.active for r in self.session.runs.values())

    def ensure_running(self) -> None:
        """Start the background ticker if no one is ticking."""
        if self._task is not None and not self._task.done():
            return
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._run_async())
        else:
            self._thread = threading.Thread(target=self._run_thread, name="packetscript-pump",
                                            daemon=True)
            self._thread.start()

    async def _run_async(self) -> None:
        while self._wanted():
            self.tick()
            await asyncio.sleep(INTERVAL)

    def _run_thread(self) -> None:
        stop = threading.Event()
        while self._wanted():
            self.tick()
            stop.wait(INTERVAL)
