"""Native replay: the Judge's own process reads, judges and writes the capture (LuaJIT).

The parent sends byte ranges, not packets: "judge up to CHUNK packets from offset X and
write the passing ones at output offset Y". The child's Lua driver (lua/capture.lua) reads
the file through a mapped window, runs the script over the batch in place and writes with
pwrite; no packet becomes a Python object on either side. The watchdog is the Judge's: a
range that overruns its limit (or whose process dies) is done again one packet per
request in fresh processes, so the packet that overran is found, given the error verdict
and counted, exactly as Judge.run_many does. A record that is not a packet stops the
driver; the checked Python reader (core.pcap.read) then names the problem. The driver
takes the link-type table and the result bits from core through its configuration.
"""
from __future__ import annotations

import json
import os
import struct
import time

from packetscript_lab.judge import (CAPTURE, OK, RANGE, RANGE_HEAD, RANGE_REPLY, STARTUP_LIMIT,
                                    Judge, _Died, _Overran)
from packetscript_lab.core.results import CODES
from packetscript_lab.core.pcap import DEFAULT_ETH_HEADER, PCAP_HEADER_SIZE, pcap_header

CHUNK = 8192                     # packets per request
WINDOW = 32 << 20                # bytes of the capture mapped at a time (memory stays bounded)
_GZIP = b"\x1f\x8b"


class Fallback(Exception):
    """The native driver does not read this file: use the Python reader."""


def usable(script, path) -> bool:
    """Whether the native path can try this replay: a LuaJIT Judge and a plain file."""
    if not isinstance(script, Judge) or script.lua != "luajit":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and not head.startswith(_GZIP)


def write_pcap_header(path, linktype: int) -> None:
    with open(path, "r+b") as f:
        f.write(pcap_header(linktype))


class NativeReplay:
    """One replay of a capture file through a Judge's process."""

    def __init__(self, judge: Judge, path, out_path):
        self.judge, self.path, self.out_path = judge, str(path), out_path and str(out_path)
        self.request = {"path": self.path, "out": self.out_path, "eth": DEFAULT_ETH_HEADER.hex(),
                        "window": WINDOW}
        self.opened = None           # the child that has the capture open
        self.codes = [0] * CODES
        self.packets = 0

    # ------------------------------------------------------------------ the calls
    def _open(self, resume_at: int) -> dict:
        child = self.judge._child
        deadline = time.monotonic() + STARTUP_LIMIT
        child.send(CAPTURE, json.dumps({**self.request, "resume_at": resume_at}).encode(), deadline)
        kind, payload = child.recv(deadline)
        if kind != OK:
            raise _Died("it sent a broken reply")
        reply = json.loads(payload)
        self.opened = child
        return reply

    def _child_ready(self, offset: int) -> bool:
        """A child with the capture open at offset (started if needed); False if none starts."""
        j = self.judge
        if j._child is None and (j._closed or not j._restart()):
            return False
        if self.opened is not j._child:
            reply = self._open(offset)
            if "fallback" in reply:
                raise RuntimeError(f"the script's process cannot read the capture again: {reply['fallback']}")
        return True

    def _range(self, offset: int, most: int, out_offset: int, forced: int, limit: float):
        child = self.judge._child
        deadline = time.monotonic() + limit
        child.send(RANGE, RANGE_HEAD.pack(offset, most, out_offset, forced), deadline)
        kind, payload = child.recv(deadline)
        try:
            nxt, n, out_end, took, meta_len = RANGE_REPLY.unpack_from(payload)
            if kind != OK:
                raise ValueError
            at = RANGE_REPLY.size
            codes = payload[at:at + n]
            meta = json.loads(payload[at + n:at + n + meta_len]) if meta_len else {}
        except (ValueError, struct.error):
            raise _Died("it sent a broken reply") from None
        j = self.judge
        if n and forced < 0:
            per = took / n
            j._per_packet = per if j._per_packet is None else 0.8 * j._per_packet + 0.2 * per
        j._take_output(meta.get("output"))
        for _index, message, line in meta.get("errors", ()):
            j.last_error = j._errors.add(message, line)
        return nxt, n, out_end, codes, meta.get("stop")

    # ------------------------------------------------------------------ the replay
    def start(self):
        """Open the capture in the judge's process: its link type and first record's offset,
        or Fallback."""
        with self.judge._lock:
            if self.judge._child is None and (self.judge._closed or not self.judge._restart()):
                raise Fallback(self.judge._broken or "no process")
            try:
                reply = self._open(0)
            except (_Overran, _Died) as exc:
                self.judge._drop_child()
                raise Fallback(str(exc)) from None
        if "fallback" in reply:
            raise Fallback(reply["fallback"])
        return reply["linktype"], reply["start"]

    def run(self, offset: int, on_progress=None):
        """Judge the whole capture from offset. Returns None at its end, or (why, offset,
        output offset) when a record stopped the driver (the caller names the problem) or
        why is "broken": no process could be started to go on."""
        out_offset = PCAP_HEADER_SIZE if self.out_path else 0
        while True:
            with self.judge._lock:
                if not self._child_ready(offset):
                    return "broken", offset, out_offset
                try:
                    nxt, n, out_end, codes, stop = self._range(offset, CHUNK, out_offset, -1,
                                                               self.judge._batch_limit(CHUNK))
                except (_Overran, _Died):
                    self.judge._drop_child()
                    nxt, n, out_end, codes, stop = self._one_by_one(offset, out_offset)
            for code in set(codes):
                self.codes[code] += codes.count(code)
            self.packets += n
            if on_progress is not None:
                on_progress(nxt - offset)
            offset, out_offset = nxt, out_end
            if stop:
                return stop, offset, out_offset
            if n == 0:
                return None

    def _one_by_one(self, offset: int, out_offset: int):
        """After a range overran or its process died: one packet per request, in fresh
        processes as needed (Judge._one_by_one over the same packets)."""
        j = self.judge
        start, codes, stop = offset, bytearray(), None
        budget_end = time.monotonic() + j.batch_time_limit
        while len(codes) < CHUNK and time.monotonic() <= budget_end:
            before = time.monotonic()
            if not self._child_ready(offset):
                return offset, len(codes), out_offset, bytes(codes), "broken"
            budget_end += time.monotonic() - before      # starting a process is not the script's time
            try:
                nxt, n, out_end, c, stop = self._range(offset, 1, out_offset, -1, j.time_limit)
            except _Overran:
                j.timeouts += 1
                j._drop_child()
                message = j._timeout_message()
            except _Died as died:
                j.crashes += 1
                j._drop_child()
                message = j._crash_message(died)
            else:
                if n == 0 or stop:
                    break
                codes += c
                offset, out_offset = nxt, out_end
                continue
            # The packet that overran or crashed: the error verdict, written out if it passes.
            if not self._child_ready(offset):
                return offset, len(codes), out_offset, bytes(codes), "broken"
            nxt, n, out_end, c, stop = self._range(offset, 1, out_offset, j._error_code, STARTUP_LIMIT)
            j._error(message)
            codes += c
            offset, out_offset = nxt, out_end
        else:
            if len(codes) < CHUNK and not stop and self._child_ready(offset):
                # Out of time: the rest of the range gets the error verdict unjudged.
                nxt, n, out_end, c, stop = self._range(offset, CHUNK - len(codes), out_offset,
                                                       j._error_code, STARTUP_LIMIT)
                why = (f"not judged: the batch ran past its time limit of {j._seconds(j.batch_time_limit)} "
                       "after the script had to be restarted")
                for _ in range(n):
                    j._error(why)
                j.unjudged += n
                codes += c
                offset, out_offset = nxt, out_end
        del start
        return offset, len(codes), out_offset, bytes(codes), stop


def remove_later(result, path) -> None:
    """Delete a temporary output file when the result goes away."""
    import weakref

    weakref.finalize(result, unlink_quietly, path)


def unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
