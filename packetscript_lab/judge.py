"""A Script in its own process, watched from outside: the wall-clock limit.

The sandbox in script.py bounds a script in Lua steps; it cannot see into C functions (a
backtracking ``string.find``, ``table.sort`` of a huge table) and cannot survive a runtime
that aborts. A :class:`Judge` runs the Script in a child process
(``python -m packetscript_lab.judge_child``) and kills it when a packet or a batch runs past
its wall-clock limit, or finds it dead. It then starts a fresh child (the script compiled
again: fresh state), finds the packet that overran by running the batch again packet by
packet, and gives that packet the error verdict with a counted error. Errors, output and
counts live here in the parent, so they outlast restarts.

The parent raises for a script's behaviour only as Script does (``ScriptError`` when it
does not compile); anything the script does while running ends as a verdict and a count.
"""
from __future__ import annotations

import array
import fcntl
import inspect
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from packetscript_lab.script import (DEFAULT_ETH_HEADER, MAX_OUTPUT_LINES, ON_ERROR, RunResult,
                                     Script, ScriptError, _ErrorLog)
from packetscript_lab.core import results
from packetscript_lab.core.netutil import ETH_HLEN, checked_eth_header
from packetscript_lab.core.pcap import eth_for_ip

# Message kinds. Every message is a 5-byte header (kind, payload length) and the payload.
READY, COMPILE, BATCH, OK, FAILED = b"R", b"C", b"B", b"O", b"F"
HEADER = struct.Struct("<cI")
BATCH_HEAD = struct.Struct("<I")            # request: packet count; then lengths, times, blob
REPLY_HEAD = struct.Struct("<IiId")         # reply: count, blob length (-1: none), meta length,
                                            # seconds the script took
# The native replay (backends/capture.py, LuaJIT): the child reads a capture file itself.
CAPTURE, RANGE = b"P", b"G"                 # open a capture (JSON); judge a range of it
RANGE_HEAD = struct.Struct("<qiqi")         # request: byte offset, most packets, output offset,
                                            # forced code (-1: run the script)
RANGE_REPLY = struct.Struct("<qiqdI")       # reply: next offset, packets, output offset, seconds
                                            # the script took, meta length; then a code per packet
# The native queue worker (lab/nfqnative.py, LuaJIT): the child serves a bound queue itself.
SERVE, REPORT = b"Q", b"N"                  # serve a queue (JSON); a report while serving
REPORT_HEAD = struct.Struct("<I")           # report: meta (JSON) length; then batch records

STARTUP_LIMIT = 30.0       # seconds for a child to import lupa: slower means a broken machine
ADDRESS_SPACE_HEADROOM = 512 << 20
_F_SETPIPE_SZ = 1031
_SCRIPT_OPTIONS = [p for p in inspect.signature(Script.__init__).parameters.values()
                   if p.kind is p.KEYWORD_ONLY]


class _Pending:
    """A batch handed to the child and not yet collected."""

    __slots__ = ("frames", "times_ms", "deadline", "failure", "result")

    def __init__(self, frames, times_ms):
        self.frames, self.times_ms = frames, times_ms
        self.deadline, self.failure, self.result = 0.0, None, None


class _Overran(Exception):
    """The child did not answer within the limit."""


class _Died(Exception):
    """The child ended (a signal, an abort, an exit) or broke the protocol."""


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _reap(proc: subprocess.Popen, errfile) -> None:
    """Kill a child and collect it (also at interpreter exit and on garbage collection)."""
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdin, proc.stdout, errfile):
        try:
            f.close()
        except OSError:
            pass


class _Child:
    """One judge process and its two pipes."""

    def __init__(self, memory_limit: int):
        self.memory_limit = memory_limit
        if not sys.executable:
            raise RuntimeError("cannot start the script's process: Python's executable is unknown")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.errfile = tempfile.TemporaryFile()
        # A clean exec (subprocess), never a bare fork of a threaded process.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "packetscript_lab.judge_child", str(os.getpid()), str(memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile, bufsize=0,
            close_fds=True, env=env)
        self._reaper = weakref.finalize(self, _reap, self.proc, self.errfile)
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        for fd in (self.wfd, self.rfd):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)   # fewer wake-ups per batch
            except OSError:
                pass
        os.set_blocking(self.wfd, False)
        self._buf = bytearray()
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            kind, _ = self.recv(time.monotonic() + STARTUP_LIMIT)
            if kind != READY:
                raise _Died("it sent no greeting")
            self.ready = True

    def send(self, kind: bytes, payload: bytes, deadline: float) -> None:
        view = memoryview(HEADER.pack(kind, len(payload)) + payload)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Overran()
            _, w, _ = select.select([], [self.wfd], [], left)
            if w:
                try:
                    n = os.write(self.wfd, view)
                except (BrokenPipeError, ConnectionResetError):
                    raise _Died(self.death()) from None
                view = view[n:]

    def _fill(self, size: int, deadline: float) -> None:
        while len(self._buf) < size:
            # An answer already there counts even when the caller comes late for it.
            r, _, _ = select.select([self.rfd], [], [], max(deadline - time.monotonic(), 0))
            if not r and time.monotonic() >= deadline:
                raise _Overran()
            if r:
                chunk = os.read(self.rfd, max(size - len(self._buf), 1 << 16))
                if not chunk:
                    raise _Died(self.death())
                self._buf += chunk

    def recv(self, deadline: float) -> tuple[bytes, bytes]:
        self._fill(HEADER.size, deadline)
        kind, size = HEADER.unpack_from(self._buf)
        self._fill(HEADER.size + size, deadline)
        payload = bytes(self._buf[HEADER.size:HEADER.size + size])
        del self._buf[:HEADER.size + size]
        return kind, payload

    def death(self) -> str:
        """Why the child ended: its signal or exit status and the last line it wrote."""
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        why = _signal_name(code)
        try:
            self.errfile.seek(0, os.SEEK_END)
            self.errfile.seek(max(self.errfile.tell() - 2000, 0))
            lines = [ln for ln in self.errfile.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except (OSError, ValueError):
            lines = []
        return f"{why}: {lines[-1].strip()[:200]}" if lines else why

    def kill(self) -> None:
        self._reaper()


class _Warm:
    """One started child kept ready for the next Judge of this process: from the second
    Judge on (a replaced script, a re-run cell) compiling costs the compile, not Python's
    start-up. A process that makes a single Judge (the CLI) never starts a spare."""

    def __init__(self):
        self.lock = threading.Lock()
        self.taken = 0
        self.spare: _Child | None = None
        self.from_first = False

    def keep_ready(self) -> None:
        """Keep a spare from the first Judge on (long-lived processes: the lab, a notebook),
        and start one now: it imports lupa while the lab is built or the notebook loads, so
        even the first cell costs its compile, not Python's start-up."""
        with self.lock:
            self.from_first = True
            if self.spare is None:
                self.spare = _Child(DEFAULT_MEMORY_LIMIT)

    def start_ahead(self) -> None:
        """Start the next Judge's process now (a one-shot command: no spare after it)."""
        with self.lock:
            if self.spare is None:
                self.spare = _Child(DEFAULT_MEMORY_LIMIT)

    def take(self, memory_limit: int) -> _Child:
        with self.lock:
            self.taken += 1
            child, self.spare = self.spare, None
            if child is not None and (child.memory_limit != memory_limit or child.proc.poll() is not None):
                child.kill()
                child = None
            if child is None:
                child = _Child(memory_limit)
            if self.taken >= 2 or self.from_first:
                self.spare = _Child(memory_limit)
            return child


# What a Judge with Script's default max_memory may add (the spare started ahead is for it).
DEFAULT_MEMORY_LIMIT = next(p.default for p in _SCRIPT_OPTIONS if p.name == "max_memory") + ADDRESS_SPACE_HEADROOM
_WARM = _Warm()
keep_process_ready = _WARM.keep_ready
start_process_ahead = _WARM.start_ahead


class Judge:
    """A :class:`Script` in its own process, watched from this one.

    Takes Script's options and ``time_limit`` (seconds one packet may take, C functions
    included), ``batch_time_limit`` (seconds for a whole ``run_many`` call, and again for
    finding the packet that overran), ``memory_limit`` (address space in bytes the child
    may add to what it holds at start; default ``max_memory`` + 512 MiB, a backstop behind
    the script's own ``max_memory``). Counters (``counts()``): ``timeouts``, packets given
    the error verdict for running past the time limit; ``crashes``, packets on which the
    script's process died; ``unjudged``, packets given the error verdict unjudged (the
    batch's time ran out, or no process could be started); ``restarts``, fresh processes
    started (after any of those, or after a batch that overran as a whole).
    """

    def __init__(self, source: str, *, time_limit: float = 0.25, batch_time_limit: float = 3.0,
                 memory_limit: int | None = None, **options):
        for label, value in (("time_limit", time_limit), ("batch_time_limit", batch_time_limit)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{label} must be a number of seconds above 0, not {value!r}")
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
                                         or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a number of bytes above 0, not {memory_limit!r}")
        bound = inspect.signature(Script.__init__).bind(None, source, **options)  # TypeError as Script
        del bound
        if not isinstance(source, str):
            raise TypeError(f"source must be a str, not {type(source).__name__}")
        values = {p.name: options.get(p.name, p.default) for p in _SCRIPT_OPTIONS}
        try:
            self._compile_request = json.dumps({"source": source, "options": options}).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a script option cannot be sent to the script's process: {exc}") from None
        self.source = source
        for key, value in values.items():
            setattr(self, key, value)                # name, lua, profile, on_error, budget, ...
        self.time_limit, self.batch_time_limit = float(time_limit), float(batch_time_limit)
        max_memory = values.get("max_memory")
        self.memory_limit = memory_limit or (max_memory or 2 << 30) + ADDRESS_SPACE_HEADROOM
        self.output: list[str] = []
        self.last_error = None
        self._errors = _ErrorLog()
        self._error_code = ON_ERROR.get(self.on_error, 0) | results.FAILED
        self.restarts = self.timeouts = self.crashes = self.unjudged = 0
        self._eth_header = DEFAULT_ETH_HEADER
        self._lock = threading.RLock()
        self._child: _Child | None = None
        self._spare: _Child | None = None
        self._broken: str | None = None       # why no child runs the script now
        self._closed = False
        self._per_packet: float | None = None   # seconds per packet of recent batches
        self._pending: _Pending | None = None
        self._child = self._start()

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> _Child:
        """A child with the script compiled, or ScriptError (ValueError for a bad option;
        RuntimeError when no child starts at all: a broken installation)."""
        child, self._spare = self._spare or _WARM.take(self.memory_limit), None
        try:
            child.wait_ready()
        except (_Died, _Overran) as exc:
            child.kill()
            raise RuntimeError("cannot start the script's process (python -m packetscript_lab.judge_child): "
                               f"{exc or 'it did not start within ' + str(STARTUP_LIMIT) + ' s'}; "
                               "check that lupa is installed for this Python") from None
        try:
            child.send(COMPILE, self._compile_request, time.monotonic() + STARTUP_LIMIT)
            kind, payload = child.recv(time.monotonic() + self.batch_time_limit)
        except _Overran:
            child.kill()
            raise ScriptError(f"the top level ran past the time limit of {self._seconds(self.batch_time_limit)} "
                              "(a C function such as string.find ran too long)", None, self.name) from None
        except _Died as died:
            child.kill()
            raise ScriptError(f"the script's process died while loading the script ({died})",
                              None, self.name) from None
        try:
            reply = json.loads(payload)
        except ValueError:
            child.kill()
            raise ScriptError("the script's process sent a broken reply while loading the script",
                              None, self.name) from None
        self._take_output(reply.get("output"))
        if kind == FAILED:
            child.kill()
            if reply["kind"] == "value":
                raise ValueError(reply["message"])
            if reply["kind"] == "install":
                raise RuntimeError(f"the script's process cannot load its Lua runtime ({reply['message']}); "
                                   f"install lupa for {sys.executable}")
            raise ScriptError(reply["message"], reply.get("line"), reply.get("name", self.name))
        return child

    def _restart(self) -> bool:
        """Replace a dead or killed child by a fresh one; False (and why in _broken) if that fails."""
        try:
            self._child = self._start()
        except (ScriptError, ValueError, RuntimeError) as exc:
            self._child, self._broken = None, f"the script could not be restarted: {exc}"
            return False
        self._broken = None
        # A script that overran once may do it again: keep a started process ready, so the
        # next restart costs the compile and not Python's start-up.
        self._spare = _Child(self.memory_limit)
        return True

    def _drop_child(self) -> None:
        """Kill the child that overran or collect the one that died; the next call runs
        the script in a fresh one (started now, so that it is ready by then)."""
        if self._child is not None:
            self._child.kill()
            self._child = None
            self.restarts += 1
        if self._spare is None and not self._closed:
            self._spare = _Child(self.memory_limit)

    def close(self) -> None:
        """Stop the script's process (errors, output and counts stay readable)."""
        with self._lock:
            self._closed = True
            self._pending = None
            for child in (self._child, self._spare):
                if child is not None:
                    child.kill()
            self._child = self._spare = None
            self._broken = "the judge is closed"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ Script's interface
    @property
    def error_count(self) -> int:
        return self._errors.count

    @property
    def errors(self):
        return list(self._errors.kept)

    def counts(self) -> dict[str, int]:
        """How often the wall-clock line acted (see the class's description)."""
        return {"restarts": self.restarts, "timeouts": self.timeouts, "crashes": self.crashes,
                "unjudged": self.unjudged}

    @property
    def pid(self) -> int | None:
        """The process id of the child that runs the script now (None while none does)."""
        child = self._child
        return child.proc.pid if child is not None else None

    @property
    def eth_header(self) -> bytes:
        return self._eth_header

    @eth_header.setter
    def eth_header(self, header: bytes) -> None:
        self._eth_header = checked_eth_header(header)

    def run(self, frame: bytes, ts: float | None = None) -> RunResult:
        ms = (time.monotonic() if ts is None else ts) * 1000
        codes, blob, errors = self.run_many([frame], [ms])
        error = errors.get(0)
        if error is not None:
            self.last_error = error
        changed = bool(codes[0] & results.CHANGED) and blob is not None
        return RunResult(results.verdict(codes[0]), blob if changed else frame, changed, error)

    def judge_ip(self, packet: bytes, ts: float | None = None) -> tuple[int, bytes | None]:
        ms = (time.monotonic() if ts is None else ts) * 1000
        # behind the header's MACs with the EtherType of the packet's IP version, as Script does
        codes, blob, errors = self.run_many([eth_for_ip(packet, self._eth_header) + packet], [ms])
        code = codes[0]
        data = blob[ETH_HLEN:] if code & results.BODY_CHANGED and blob is not None else None
        if code & results.FAILED:
            self.last_error = errors.get(0)
        # The IP packet counts as changed only when bytes after the Ethernet header did.
        changed = results.CHANGED | results.BODY_CHANGED if data is not None else 0
        return (code & (results.VERDICT | results.FAILED | results.ETH_CHANGED)) | changed, data

    def run_ip(self, packet: bytes, ts: float | None = None) -> RunResult:
        code, data = self.judge_ip(packet, ts)
        return RunResult(results.verdict(code), packet if data is None else data, data is not None,
                         self.last_error if code & results.FAILED else None,
                         bool(code & results.ETH_CHANGED))

    def run_many(self, frames, times_ms=None):
        """As Script.run_many, with the packet that ran past its limit given the error verdict."""
        with self._lock:
            self.submit(frames, times_ms)
            return self.collect()

    def submit(self, frames, times_ms=None) -> None:
        """Hand a batch to the script's process and return at once, so the caller can read
        the next batch meanwhile; ``collect()`` gives what ``run_many`` would. One batch at
        a time: collect it before submitting another. Its time limit runs from now."""
        n = len(frames)
        if times_ms is None:
            times_ms = [time.monotonic() * 1000] * n
        with self._lock:
            if self._pending is not None:
                raise RuntimeError("a batch is already submitted: collect() it first")
            pending = self._pending = _Pending(frames, times_ms)
            if n == 0:
                pending.result = (b"", None, {})
            elif self._child is None and (self._closed or not self._restart()):
                pending.result = self._unjudged(frames, range(n), self._broken)
            else:
                pending.deadline = time.monotonic() + self._batch_limit(n)
                try:
                    self._send_batch(frames, times_ms, pending.deadline)
                except (_Overran, _Died) as exc:
                    pending.failure = exc

    def collect(self):
        """``(codes, blob, errors)`` of the batch given to ``submit()``, as run_many."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                raise RuntimeError("no batch was submitted")
            if pending.result is not None:
                return pending.result
            failure = pending.failure
            if failure is None:
                try:
                    return self._receive_batch(len(pending.frames), pending.deadline)
                except (_Overran, _Died) as exc:
                    failure = exc
            return self._recover(pending.frames, pending.times_ms, failure)

    def _recover(self, frames, times_ms, failure):
        """The batch overran or its process died: blame a lone packet, else find the culprit."""
        self._drop_child()
        if len(frames) > 1:
            return self._one_by_one(frames, times_ms)
        if isinstance(failure, _Overran):
            self.timeouts += 1
            return self._blame(frames, 0, self._timeout_message())
        self.crashes += 1
        return self._blame(frames, 0, self._crash_message(failure))

    # ------------------------------------------------------------------ the watched calls
    def _batch_limit(self, n: int) -> float:
        """How long a batch of n packets may take: one packet's limit on top of four times
        what n packets took of late, so a packet that overruns is caught inside a batch too.
        Never above batch_time_limit; before any measurement, n times the packet limit."""
        if self._per_packet is None:
            return min(self.batch_time_limit, self.time_limit * n)
        return min(self.batch_time_limit, self.time_limit + 4 * n * self._per_packet)

    def _call(self, frames, times_ms, limit: float):
        deadline = time.monotonic() + limit
        self._send_batch(frames, times_ms, deadline)
        return self._receive_batch(len(frames), deadline)

    def _send_batch(self, frames, times_ms, deadline: float) -> None:
        request = b"".join([BATCH_HEAD.pack(len(frames)), array.array("i", map(len, frames)).tobytes(),
                            array.array("d", times_ms).tobytes(), *frames])
        self._child.send(BATCH, request, deadline)

    def _receive_batch(self, n: int, deadline: float):
        kind, payload = self._child.recv(deadline)
        try:
            return self._parse_reply(kind, payload, n)
        except (ValueError, TypeError, KeyError, struct.error):
            raise _Died("it sent a broken reply") from None

    def _parse_reply(self, kind, payload, n: int):
        if kind != OK or len(payload) < REPLY_HEAD.size:
            raise ValueError("out of turn")
        count, blob_len, meta_len, took = REPLY_HEAD.unpack_from(payload)
        if count != n:
            raise ValueError("another batch's answer")
        # The script's own time per packet (the parent may come late to collect it).
        took /= n
        self._per_packet = took if self._per_packet is None else 0.8 * self._per_packet + 0.2 * took
        at = REPLY_HEAD.size
        codes = payload[at:at + count]
        at += count
        blob = None
        if blob_len >= 0:
            blob, at = payload[at:at + blob_len], at + blob_len
        errors = {}
        if meta_len:
            meta = json.loads(payload[at:at + meta_len])
            self._take_output(meta.get("output"))
            for index, message, line in meta.get("errors", ()):
                errors[index] = self._errors.add(message, line)
        return codes, blob, errors

    def _one_by_one(self, frames, times_ms):
        """After a batch overran or crashed: each packet alone, in fresh processes as needed."""
        n = len(frames)
        codes, pieces, errors, changed = bytearray(n), [], {}, False
        budget_end = time.monotonic() + self.batch_time_limit
        for i, (frame, ms) in enumerate(zip(frames, times_ms)):
            if time.monotonic() > budget_end:
                break
            if self._child is None:
                # Starting a process is the machine's time, not the script's: not counted.
                before = time.monotonic()
                restarted = self._restart()
                budget_end += time.monotonic() - before
                if not restarted:
                    break
            try:
                c, blob, errs = self._call([frame], [ms], self.time_limit)
            except _Overran:
                self.timeouts += 1
                self._drop_child()
                c, blob, errs = bytes([self._error_code]), None, {0: self._error(self._timeout_message())}
            except _Died as died:
                self.crashes += 1
                self._drop_child()
                c, blob, errs = bytes([self._error_code]), None, {0: self._error(self._crash_message(died))}
            codes[i] = c[0]
            if 0 in errs:
                errors[i] = errs[0]
            pieces.append(frame if blob is None else blob)
            changed = changed or blob is not None
        else:
            return bytes(codes), b"".join(pieces) if changed else None, errors
        # Out of time (or no process could be started): the rest get the error verdict.
        why = self._broken if self._child is None and self._broken else (
            f"not judged: the batch ran past its time limit of {self._seconds(self.batch_time_limit)} "
            "after the script had to be restarted")
        done = len(pieces)
        rest_codes, _blob, rest_errors = self._unjudged(frames[done:], range(n - done), why)
        codes[done:] = rest_codes
        errors.update({done + i: e for i, e in rest_errors.items()})
        if changed:
            pieces.extend(frames[done:])
        return bytes(codes), b"".join(pieces) if changed else None, errors

    def _blame(self, frames, index, message):
        error = self._error(message)
        codes = bytearray([0] * len(frames))
        codes[index] = self._error_code
        return bytes(codes), None, {index: error}

    def _unjudged(self, frames, indexes, message):
        error = None
        errors = {}
        for i in indexes:
            error = self._error(message)
            errors[i] = error
        self.unjudged += len(errors)
        return bytes([self._error_code]) * len(frames), None, errors

    def _error(self, message: str):
        self.last_error = self._errors.add(message, None)
        return self.last_error

    def _timeout_message(self) -> str:
        return (f"time limit of {self._seconds(self.time_limit)} exceeded on one packet (a C function "
                "such as string.find ran too long); the script restarted with fresh state")

    @staticmethod
    def _crash_message(died: _Died) -> str:
        return (f"the script's process died on this packet ({died}); "
                "the script restarted with fresh state")

    @staticmethod
    def _seconds(limit: float) -> str:
        return f"{limit * 1000:.0f} ms" if limit < 1 else f"{limit:g} s"

    def _take_output(self, lines) -> None:
        if lines:
            room = MAX_OUTPUT_LINES - len(self.output)
            self.output.extend(lines[:max(room, 0)])

    def __repr__(self) -> str:
        return f"Judge({self.name!r}, lua={self.lua}, profile={self.profile}, time_limit={self.time_limit})"
