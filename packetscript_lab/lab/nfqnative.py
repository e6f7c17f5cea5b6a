"""The native queue worker: the script's own process reads, judges and answers the queue.

On LuaJIT a script's watched process (judge.py) serves the queue itself (lua/nfqueue.lua):
many queued packets per system call, one Lua call per batch, one message for all the
batch's verdicts. No packet crosses into Python. This module is the lab's side of it:

- It binds the queue on a netlink socket of its own (in the host's namespace) and keeps it
  for the life of the attachment; the script's process takes a copy (pidfd_getfd). While
  that process restarts, packets wait in the kernel's queue (``queue_len``) and, with
  ``on_overload="accept"``, pass unjudged once it is full (NFQA_CFG_F_FAIL_OPEN).
- A shared page holds the counters and the batch in progress (packet ids, marks, one result
  byte per packet, 0xFF until judged), so counts outlast restarts, and the watchdog here
  sees per-packet progress: a packet that runs past ``time_limit`` (or a batch past
  ``batch_time_limit``), or a process that dies, gets the process killed and restarted;
  the packet that hung gets the error verdict, the batch's packets after it too (counted
  ``unjudged``), the ones before it their own verdicts.
- Reports from the script's process carry the latest packets (``h.packets()``), errors and
  printed lines.

Replacing the script stops the old process's serving at a batch boundary and starts the
new one on the same socket: no packet is lost or judged twice.
"""
from __future__ import annotations

import array
import collections
import json
import mmap
import os
import socket
import struct
import threading
import time
import weakref
from typing import Any, Callable

from packetscript_lab.core import results
from packetscript_lab.core.netutil import ETH_HLEN
from packetscript_lab.core.results import BY_CODE, VERDICT
from packetscript_lab.judge import (FAILED, OK, REPORT, REPORT_HEAD, SERVE, STARTUP_LIMIT,
                                    _Died, _Overran)
from packetscript_lab.runs import COUNTER_NAMES, Recent

from .worker import WorkerLifecycle

ENV_SWITCH = "PACKETSCRIPT_NFQUEUE_WORKER"   # "native" (default on LuaJIT) or "python"

# The shared page (lua/nfqueue.lua has the same layout).
SHM_SIZE, MAXB = 4096, 64
_HEAD = struct.Struct("=QIIII")              # seq, state, n, stop, continue_accepts
_STATE, _STOP, _CONTINUE = 8, 16, 20
_COUNTERS = struct.Struct("=10Q")            # COUNTER_NAMES order, then batches
_COUNTERS_AT, _TIMES_AT = 24, 104
_IDS, _MARKS, _RESULTS = 192, 192 + 4 * MAXB, 192 + 8 * MAXB
_REC = struct.Struct("<IIIId")               # batch record: seq, packets, bytes, changed, time

# nfnetlink_queue (linux/netfilter/nfnetlink_queue.h)
_NETLINK_NETFILTER = 12
_CONFIG, _VERDICT = (3 << 8) | 2, (3 << 8) | 1
_CFG_CMD, _CFG_PARAMS, _CFG_MAXLEN, _CFG_MASK, _CFG_FLAGS = 1, 2, 3, 4, 5
_CMD_BIND, _COPY_PACKET, _FAIL_OPEN = 1, 2, 0x1
COPY_RANGE = 0xFFFF
_SO_RCVBUFFORCE = 33


def wanted(script: Any, choice: str | None = None) -> bool:
    """Whether a script runs on the native worker: ``choice`` (an attach option, else the
    environment's PACKETSCRIPT_NFQUEUE_WORKER, else "native") is "native" and the script is
    a watched LuaJIT script. "python" keeps the NetfilterQueue worker (nfqueue.py)."""
    choice = choice or os.environ.get(ENV_SWITCH) or "native"
    if choice not in ("native", "python"):
        raise ValueError(f"worker must be 'native' or 'python' (the NetfilterQueue worker), not {choice!r}")
    return choice == "native" and script is not None and getattr(script, "lua", None) == "luajit" \
        and hasattr(script, "_restart")


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(queue_num: int, mtype: int, attrs: bytes, seq: int, ack: bool) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue_num) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 1 | (4 if ack else 0), seq, 0) + body


def _configure(sock: socket.socket, queue_num: int, attrs: bytes) -> None:
    seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
    sock.send(_message(queue_num, _CONFIG, attrs, seq, True))
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        reply = sock.recv(65536)
        off = 0
        while off + 16 <= len(reply):
            mlen, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", reply, off)
            if mtype == 2 and mseq == seq:                       # NLMSG_ERROR (0: the ack)
                (err,) = struct.unpack_from("=i", reply, off + 16)
                if err:
                    raise OSError(-err, f"configuring queue {queue_num}: {os.strerror(-err)}")
                return
            off += max((mlen + 3) & ~3, 16)
    raise TimeoutError(f"queue {queue_num}: the kernel did not answer its configuration")


def bind_queue(queue_num: int, queue_len: int, fail_open: bool) -> socket.socket:
    """A netlink socket with queue ``queue_num`` bound: whole packets, ``queue_len`` long."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(2.0)
        for size in (8 << 20,):
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        _configure(sock, queue_num, _attr(_CFG_CMD, struct.pack("=BxH", _CMD_BIND, 0)))
        _configure(sock, queue_num, _attr(_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, _COPY_PACKET))
                   + _attr(_CFG_MAXLEN, struct.pack("!I", queue_len)))
        if fail_open:
            _configure(sock, queue_num, _attr(_CFG_MASK, struct.pack("!I", _FAIL_OPEN))
                       + _attr(_CFG_FLAGS, struct.pack("!I", _FAIL_OPEN)))
        sock.setblocking(True)       # the script's process blocks in recvmmsg on it
    except BaseException:
        sock.close()
        raise
    return sock


class SharedCounters:
    """The counters in the shared page, read as the NetfilterQueue worker's Counters."""

    def __init__(self, page: mmap.mmap):
        self._page = page

    def snapshot(self) -> dict[str, int]:
        values = _COUNTERS.unpack_from(self._page, _COUNTERS_AT)
        return dict(zip(COUNTER_NAMES, values))

    def add(self, **deltas: int) -> None:
        """Counts from this side (packets the watchdog gave verdicts): only while no
        script process runs, so the two never write at once."""
        values = list(_COUNTERS.unpack_from(self._page, _COUNTERS_AT))
        for name, delta in deltas.items():
            values[COUNTER_NAMES.index(name)] += delta
        _COUNTERS.pack_into(self._page, _COUNTERS_AT, *values)

    def __getattr__(self, name: str) -> int:
        if name in COUNTER_NAMES:
            return self.snapshot()[name]
        raise AttributeError(name)


def _decode(recent: Recent, records, by_batch: dict) -> None:
    """The batch records of one report into ``recent`` (lua/nfqueue.lua writes them)."""
    at = 0
    while at + _REC.size <= len(records):
        seq, n, total, changed, t = _REC.unpack_from(records, at)
        at += _REC.size
        lens = array.array("i", records[at:at + 4 * n])
        codes = bytes(records[at + 4 * n:at + 5 * n])
        at += 5 * n
        before = bytes(records[at:at + total])
        after = bytes(records[at + total:at + 2 * total]) if changed else None
        at += total * (2 if changed else 1)
        eths, befores, afters, off = [], [], [], 0
        for length, code in zip(lens, codes):
            eths.append(before[off:off + ETH_HLEN])
            befores.append(before[off + ETH_HLEN:off + length])
            afters.append(after[off + ETH_HLEN:off + length]
                          if after is not None and code & results.BODY_CHANGED else None)
            off += length
        recent.add_batch(t, befores, afters, [BY_CODE[c & VERDICT] for c in codes], by_batch.get(seq, {}), eths)


def _last_batch(records) -> int:
    """The number of the latest batch in a report's records (0: none)."""
    at, last = 0, 0
    while at + _REC.size <= len(records):
        seq, n, total, changed, _t = _REC.unpack_from(records, at)
        last = max(last, seq)
        at += _REC.size + 5 * n + total * (2 if changed else 1)
    return last


def _allow_fd_copy(pid: int) -> None:
    """Let the script's process copy our queue socket (pidfd_getfd) where Yama restricts
    ptrace to ancestors (kernel.yama.ptrace_scope=1, e.g. Ubuntu): name it our ptracer."""
    import ctypes

    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PTRACER, pid, 0, 0, 0)


_PR_SET_PTRACER = 0x59616D61


class _LazyRecent(Recent):
    """The recent packets as the reports brought them, decoded only when someone reads
    them: a busy queue sends a report every few milliseconds, read far less often."""

    def __init__(self, size: int):
        super().__init__(size)
        self._lock = threading.Lock()
        self._raw: collections.deque = collections.deque()
        self._raw_count = 0

    def add_raw(self, packets: int, records, by_batch: dict) -> None:
        if not packets:
            return
        with self._lock:
            self._raw.append((packets, records, by_batch))
            self._raw_count += packets
            while self._raw_count - self._raw[0][0] >= self.size:
                self._raw_count -= self._raw.popleft()[0]

    def items(self) -> list[tuple]:
        with self._lock:
            raw, self._raw, self._raw_count = self._raw, collections.deque(), 0
            for _packets, records, by_batch in raw:
                _decode(self, records, by_batch)
            return super().items()


class NativeQueueWorker(WorkerLifecycle):
    """As QueueWorker (nfqueue.py), with the script's process answering the queue; the
    thread running ``run`` binds the queue and watches that process."""

    kind = "native"
    POLL = 0.02            # how often the watchdog looks at the batch in progress

    def __init__(self, queue_num: int, mark_bit: int, script: Any, eth_by_ifindex: dict[int, bytes],
                 use_outdev: bool, fail_open: bool, on_event: Callable[[dict], None],
                 error_verdict: str = "drop", max_len: int = 4096, ring: int = 200):
        self.queue_num, self.mark_bit, self.use_outdev = queue_num, mark_bit, use_outdev
        self.eth_by_ifindex, self.fail_open, self.on_event = eth_by_ifindex, fail_open, on_event
        self.error_verdict, self.max_len, self.ring = error_verdict, max_len, ring
        self._script = script
        self._fd = os.memfd_create(f"packetscript-queue-{queue_num}")
        os.ftruncate(self._fd, SHM_SIZE)
        self._page = mmap.mmap(self._fd, SHM_SIZE)
        weakref.finalize(self, os.close, self._fd)   # the page stays readable while the lab holds us
        self.counters = SharedCounters(self._page)
        self.recent = _LazyRecent(ring)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._sock: socket.socket | None = None
        self._errors_reported = 0
        self._swap_to = None
        self._swapped = threading.Event()
        self._serving = None         # the Judge whose process serves the queue now
        self._failure: str | None = None   # why the worker stopped on its own
        self._progress = (None, 0.0, 0.0)   # (seq, done), seen at, batch seen at
        self._reported_seq = 0       # the latest batch a report has brought

    # -- what the lab reads and sets --

    @property
    def first_t(self) -> float:
        return struct.unpack_from("=d", self._page, _TIMES_AT)[0]

    @property
    def last_t(self) -> float:
        return struct.unpack_from("=d", self._page, _TIMES_AT + 8)[0]

    @property
    def continue_accepts(self) -> bool:
        return bool(struct.unpack_from("=I", self._page, _CONTINUE)[0])

    @continue_accepts.setter
    def continue_accepts(self, value: bool) -> None:
        struct.pack_into("=I", self._page, _CONTINUE, 1 if value else 0)

    @property
    def script(self):
        return self._script

    @script.setter
    def script(self, new) -> None:
        """Hot swap: returns once the new script's process serves the queue (the old one
        stopped at a batch boundary, its reports taken)."""
        if self._sock is None or self._stop.is_set():
            self._script = new
            return
        self._swapped.clear()
        self._swap_to = new
        if not self._swapped.wait(new.batch_time_limit * 2 + STARTUP_LIMIT):
            raise TimeoutError("the new script did not take over the queue in time")
        if self._failure is not None:
            raise RuntimeError(f"the queue's worker stopped: {self._failure}")

    # -- lifecycle --

    def run(self) -> None:
        try:
            self._sock = bind_queue(self.queue_num, self.max_len, self.fail_open)
            self._start(self._script)
        except BaseException as exc:
            self._bind_error = exc
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if self._swap_to is not None:
                    new, self._swap_to = self._swap_to, None
                    self._stop_serving()
                    self._script = new
                    self._start(new)
                    self._swapped.set()
                    continue
                self._watch()
            self._stop_serving()
        except BaseException as exc:         # the worker's own failure: tell, and unbind
            self._failure = f"{type(exc).__name__}: {exc}"
            self._event_error("queue", self._failure)
        finally:
            self._swapped.set()
            self._sock.close()

    def wait_bound(self, timeout: float = STARTUP_LIMIT) -> None:
        super().wait_bound(timeout)   # the script's process must start first

    # -- serving --

    def _request(self) -> bytes:
        eths = b"".join(struct.pack("=I", idx) + eth[:12] for idx, eth in self.eth_by_ifindex.items())
        default = next(iter(self.eth_by_ifindex.values()), b"\0" * 12)[:12]
        return json.dumps({"pid": os.getpid(), "sock": self._sock.fileno(), "shm": self._fd,
                           "queue": self.queue_num, "bit": self.mark_bit, "outdev": self.use_outdev,
                           "copy_range": COPY_RANGE, "ring": self.ring, "eths": eths.hex(),
                           "default_eth": default.hex()}).encode()

    def _start(self, judge) -> None:
        """The judge's process serves the queue from now on (restarted first if needed)."""
        struct.pack_into("=II", self._page, _STATE, 0, 0)
        # batches before a restart are reported or gone; the new process counts on from here
        self._reported_seq = _HEAD.unpack_from(self._page)[0]
        self._serving = None
        while True:
            with judge._lock:
                if judge._closed:
                    raise RuntimeError("the script was closed")
                if judge._child is None and not judge._restart():
                    child = None
                else:
                    child = judge._child
            if child is None:                # retried: the queue fails open meanwhile
                self._event_error("restart", judge._broken)
                if self._stop.wait(1.0):
                    return
                continue
            try:
                _allow_fd_copy(child.proc.pid)
                child.send(SERVE, self._request(), time.monotonic() + STARTUP_LIMIT)
                kind, payload = child.recv(time.monotonic() + STARTUP_LIMIT)
            except (_Overran, _Died) as exc:
                with judge._lock:
                    judge._drop_child()
                self._event_error("restart", f"the script's process did not take the queue: {exc}")
                if self._stop.wait(0.1):
                    return
                continue
            if kind != OK:
                message = json.loads(payload).get("message", "") if kind == FAILED else "out of turn"
                raise RuntimeError(f"the native queue worker did not start: {message}; "
                                   "attach with worker=\"python\" to use the NetfilterQueue worker")
            self._serving = judge
            self._progress = (None, 0.0, 0.0)
            return

    def _stop_serving(self) -> None:
        judge = self._serving
        if judge is None:
            return
        struct.pack_into("=I", self._page, _STOP, 1)
        end = time.monotonic() + judge.batch_time_limit + 2 * self.POLL + 1.0
        while self._serving is judge and time.monotonic() < end:
            if self._watch(restart=False) == "stop":
                break
        self._serving = None
        struct.pack_into("=I", self._page, _STOP, 0)

    def _watch(self, restart: bool = True) -> str | None:
        """Takes one report (waiting up to POLL) and checks the batch in progress; kills
        and restarts a process that hangs or died. Returns the report's status."""
        judge = self._serving
        if judge is None:
            if restart and not self._stop.is_set():
                self._start(self._script)
            else:
                time.sleep(self.POLL)
            return None
        child = judge._child
        try:
            if child is None:
                raise _Died("it was stopped")
            kind, payload = child.recv(time.monotonic() + self.POLL)
        except _Overran:
            return self._check_progress(judge, restart)
        except _Died as died:
            self._recover(judge, died)
            if restart:
                self._start(judge)
            return "stop"
        if kind != REPORT:
            self._recover(judge, _Died("it broke the protocol"))
            if restart:
                self._start(judge)
            return "stop"
        status = self._take_report(judge, payload)
        self._check_progress(judge, restart)
        return status

    def _check_progress(self, judge, restart: bool) -> None:
        seq, state, n = _HEAD.unpack_from(self._page)[:3]
        now = time.monotonic()
        if state != 1:
            self._progress = (None, now, now)
            return None
        done = self._page[_RESULTS:_RESULTS + n].find(b"\xff")
        key = (seq, done)
        last, seen_at, batch_at = self._progress
        if key != last:
            self._progress = (key, now, batch_at if last and last[0] == seq else now)
            return None
        if now - seen_at > judge.time_limit or now - batch_at > judge.batch_time_limit:
            self._recover(judge, _Overran())
            if restart:
                self._start(judge)
            return "stop"
        return None

    def _recover(self, judge, failure) -> None:
        """The process overran or died: kill it, give the batch in progress its verdicts."""
        closed = judge._closed
        with judge._lock:
            judge._drop_child()
        self._serving = None
        seq, state, n = _HEAD.unpack_from(self._page)[:3]
        struct.pack_into("=I", self._page, _STATE, 0)
        if closed or state not in (1, 2):
            return
        ids = array.array("I", self._page[_IDS:_IDS + 4 * n])
        marks = array.array("I", self._page[_MARKS:_MARKS + 4 * n])
        results = bytearray(self._page[_RESULTS:_RESULTS + n])
        counts = dict.fromkeys(("seen", "errors", "accepted", "dropped", "continued"), 0)
        blamed = False
        for i, code in enumerate(results):
            if code != 0xFF:
                if state == 1:           # judged, not yet counted
                    counts["seen"] += 1
                    counts[("dropped", "accepted", "continued", "continued")[code & VERDICT]] += 1
                    counts["errors"] += bool(code & results.FAILED)
                continue
            if not blamed:
                blamed = True
                if isinstance(failure, _Overran):
                    judge.timeouts += 1
                    message = judge._timeout_message()
                else:
                    judge.crashes += 1
                    message = judge._crash_message(failure)
            else:
                judge.unjudged += 1
                message = ("not judged: an earlier packet of its batch made the script restart "
                           f"({'time limit' if isinstance(failure, _Overran) else 'crash'})")
            error = judge._error(message)
            results[i] = code = judge._error_code
            counts["seen"] += 1
            counts["errors"] += 1
            counts[("dropped", "accepted", "continued", "continued")[code & VERDICT]] += 1
            self._script_error(error)
        if state == 1:
            self.counters.add(**counts)
        self._send_verdicts(ids, marks, results)

    def _send_verdicts(self, ids, marks, results) -> None:
        cont = self.continue_accepts
        out = []
        for pid, mark, code in zip(ids, marks, results):
            v = code & VERDICT
            if v == 1 or (v == 2 and cont):
                attrs = _attr(2, struct.pack("!II", 1, pid))
            elif v == 0:
                attrs = _attr(2, struct.pack("!II", 0, pid))
            else:
                attrs = _attr(2, struct.pack("!II", 4, pid)) + _attr(3, struct.pack("!I", mark | self.mark_bit))
            out.append(_message(self.queue_num, _VERDICT, attrs, 0, False))
        try:
            self._sock.send(b"".join(out))
        except OSError as exc:
            self._event_error("verdict", f"{type(exc).__name__}: {exc}")

    # -- reports --

    def _take_report(self, judge, payload: bytes) -> str:
        (size,) = REPORT_HEAD.unpack_from(payload)
        at = REPORT_HEAD.size
        meta = json.loads(payload[at:at + size])
        records = memoryview(payload)[at + size:]
        by_batch: dict[int, dict] = {}
        for seq, i, message, line in meta.get("errors", ()):
            error = judge._errors.add(message, line)
            judge.last_error = error
            by_batch.setdefault(seq, {})[i] = error
            self._script_error(error)
        judge._take_output(meta.get("output"))
        if meta.get("socket_error"):
            self._event_error("queue", f"the queue's socket: {meta['socket_error']}")
        self.recent.add_raw(meta.get("packets", 0), records, by_batch)
        self._reported_seq = max(self._reported_seq, _last_batch(records))
        return meta["status"]

    def settle(self, timeout: float = 1.0) -> None:
        """Wait (briefly) until the reports cover every batch judged so far: a report
        follows its batch within milliseconds, and a record, the recent packets, errors
        and printed lines read just after the traffic must include its last packet."""
        deadline = time.monotonic() + timeout
        while self._serving is not None and time.monotonic() < deadline:
            seq, state = _HEAD.unpack_from(self._page)[:2]
            if self._reported_seq >= seq - (1 if state else 0):   # one in progress: not yet due
                return
            time.sleep(0.002)


