"""What every queue worker does around its data path: wait for its queue to be bound,
wait for the queue to empty, stop, and tell the notebook of errors (a bounded number).
Both workers (nfqueue.py: NetfilterQueue; nfqnative.py: the script's process reads the
queue) keep ``queue_num``, ``counters``, ``on_event``, ``_errors_reported``, the events
``_ready`` and ``_stop``, and ``_bind_error`` when binding failed."""
from __future__ import annotations

import time


class WorkerLifecycle:
    def wait_bound(self, timeout: float = 5.0) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"queue {self.queue_num} did not bind within {timeout}s")
        if self._bind_error is not None:
            raise self._bind_error

    def drain(self, quiet: float = 0.1, limit: float = 2.0) -> None:
        """Wait until no packet was seen for ``quiet`` seconds (after its rule is gone)."""
        end = time.monotonic() + limit
        last = -1
        while time.monotonic() < end:
            cur = self.counters.seen
            if cur == last:
                return
            last = cur
            time.sleep(quiet)

    def stop(self) -> None:
        self._stop.set()

    def _script_error(self, error) -> None:
        if self._errors_reported < 20:
            self._errors_reported += 1
            self.on_event({"event": "script_error", "message": str(error), "line": error.line})

    def _event_error(self, where: str, message: str) -> None:
        if self._errors_reported < 50:
            self._errors_reported += 1
            try:
                self.on_event({"event": "error", "where": where, "message": message})
            except BaseException:
                pass
