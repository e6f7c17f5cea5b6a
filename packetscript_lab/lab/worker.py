"""What every queue worker does around its data path: wait for its queue to be bound,
wait for the queue to empty, and stop. Both workers (nfqueue.py: NetfilterQueue;
nfqnative.py: the script's process reads the queue) keep ``queue_num``, ``counters``
and the events ``_ready`` and ``_stop``, and ``_bind_error`` when binding failed."""
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
