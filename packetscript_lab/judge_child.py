"""The judge's child process: ``python -m packetscript_lab.judge_child PARENT_PID MEMORY_LIMIT``.

Reads requests from stdin and writes replies to stdout in the framing of judge.py: one
compile (the script's source and options), then batches of packets. It holds one Script
and nothing else; the parent kills it when it runs too long and starts another.
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import resource
import struct
import sys
import threading
import time

from packetscript_lab.judge import (BATCH, BATCH_HEAD, CAPTURE, COMPILE, FAILED, HEADER, OK,
                                    RANGE, RANGE_HEAD, RANGE_REPLY, READY, REPLY_HEAD, REPORT,
                                    REPORT_HEAD, SERVE)
from packetscript_lab.core import pcap, results
from packetscript_lab.script import Script, ScriptError, _error_records, _lua_source


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    _write_all(fd, HEADER.pack(kind, len(payload)) + payload)


def _watch_parent(parent_pid: int) -> None:
    """End this process when the parent is gone, even while Lua runs (lupa lets go of the
    GIL inside Lua, so this thread runs)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _limit_address_space(extra: int) -> None:
    """A backstop behind the script's max_memory: the whole process may grow by ``extra``."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Output:
    """Hands the parent each output line once."""

    def __init__(self):
        self.sent = 0

    def new(self, script) -> list[str]:
        lines = list(script.output)
        fresh, self.sent = lines[self.sent:], len(lines)
        return fresh


def _compile(payload: bytes, output: _Output):
    request = json.loads(payload)
    try:
        script = Script(request["source"], **request["options"])
    except ScriptError as exc:
        return None, {"kind": "script", "message": exc.message, "line": exc.line, "name": exc.name}
    except (ValueError, TypeError) as exc:
        return None, {"kind": "value", "message": str(exc)}
    except ImportError as exc:          # lupa (or one of its runtimes) missing: not the script's fault
        return None, {"kind": "install", "message": str(exc)}
    except Exception as exc:  # lupa's own errors (memory at load time, ...)
        return None, {"kind": "script", "message": f"{type(exc).__name__}: {exc}", "line": None}
    return script, {"output": output.new(script)}


def _batch(script: Script, payload: bytes, output: _Output) -> bytes:
    (n,) = BATCH_HEAD.unpack_from(payload)
    at = BATCH_HEAD.size
    lengths = array.array("i")
    lengths.frombytes(payload[at:at + 4 * n])
    at += 4 * n
    times = array.array("d")
    times.frombytes(payload[at:at + 8 * n])
    at += 8 * n
    frames = []
    for length in lengths:
        frames.append(payload[at:at + length])
        at += length
    started = time.monotonic()
    codes, blob, errors = script.run_many(frames, times.tolist())
    took = time.monotonic() - started
    meta = {}
    if errors:
        meta["errors"] = [[i, e.message, e.line] for i, e in errors.items()]
    lines = output.new(script)
    if lines:
        meta["output"] = lines
    meta_bytes = json.dumps(meta).encode() if meta else b""
    return b"".join([REPLY_HEAD.pack(len(codes), -1 if blob is None else len(blob), len(meta_bytes), took),
                     bytes(codes), blob or b"", meta_bytes])


def _capture_config(lua, eth: bytes):
    """capture.lua's configuration: the link-type table, the file formats' numbers, the
    synthetic Ethernet headers and the verdict bits, from core (the driver keeps no copy)."""
    links = {code: lua.table_from({b"kind": lt["kind"].encode(), b"header": lt["header"],
                                   b"proto_at": lt["proto_at"]})
             for code, lt in pcap.lua_link_types().items()}
    return lua.table_from({
        b"eth": pcap.eth_for_ip(b"\x45", eth), b"eth6": pcap.eth_for_ip(b"\x60", eth),
        b"link_types": lua.table_from(links), b"max_record": pcap.MAX_RECORD,
        b"format": lua.table_from({k.encode(): v for k, v in pcap.lua_format().items()}),
        b"max_header": max(lt.header for lt in pcap.LINK_TYPES.values()),
        b"verdict": results.VERDICT})


class _Capture:
    """The native replay driver (lua/capture.lua) in the script's own Lua runtime: the
    capture is read, judged and written there, in batches, without a Python object per
    packet. Loaded again (and the file opened again at the same place) when the Script
    replaced its runtime."""

    def __init__(self):
        self.request = None
        self.engine = None
        self.driver = None

    def open(self, script: Script, payload: bytes) -> dict:
        self.request = json.loads(payload)
        return self._load(script, self.request.get("resume_at", 0))

    def _load(self, script: Script, resume_at: int) -> dict:
        if script.lua != "luajit":
            return {"fallback": "the native replay runs on LuaJIT only"}
        g = script._lua.globals()
        chunk = g.loadstring(_lua_source("capture.lua"), b"=capture.lua")
        driver = chunk(script._engine, _capture_config(script._lua, bytes.fromhex(self.request["eth"])))
        out = self.request.get("out")
        r = driver.open(self.request["path"].encode(), out.encode() if out else None, resume_at,
                        self.request.get("window"))
        linktype, start = r if isinstance(r, tuple) else (r, None)
        if linktype is None:
            return {"fallback": start.decode() if isinstance(start, bytes) else str(start)}
        self.engine, self.driver = script._engine, driver
        return {"linktype": int(linktype), "start": int(start)}

    def run(self, script: Script, payload: bytes, output: _Output) -> bytes:
        offset, most, out_offset, forced = RANGE_HEAD.unpack(payload)
        if self.driver is None or script._engine is not self.engine:
            if self.request is None or "fallback" in self._load(script, offset):
                raise SystemExit(3)          # the parent falls back as for a dead process
        started = time.monotonic()
        r = script._enter(self.driver.run, offset, most, out_offset, forced)
        took = time.monotonic() - started
        if r is None:                        # the runtime failed outside the script: a crash
            raise SystemExit(3)
        nxt, n, out_end, codes, errs, nout, stop = r
        if nout:
            script._drain_output()
        meta = {}
        if errs:
            meta["errors"] = [[i, script._message(m), script._line(line)] for i, m, line in _error_records(errs)]
        lines = output.new(script)
        if lines:
            meta["output"] = lines
        if stop is not None:
            meta["stop"] = stop.decode("utf-8", "replace")
        meta_bytes = json.dumps(meta).encode() if meta else b""
        return b"".join([RANGE_REPLY.pack(int(nxt), int(n), int(out_end), took, len(meta_bytes)),
                         codes, meta_bytes])


class _Queue:
    """The native queue worker (lua/nfqueue.lua) in the script's own Lua runtime: reads,
    judges and gives verdicts to a queue the lab process bound, until the lab process sets
    the stop flag in the shared page. Reports (recent packets, errors, printed lines) go to
    the parent as they come; no packet becomes a Python object on the way."""

    # Report at least every IDLE seconds; LAG after a batch, but GAP apart at the least.
    IDLE, LAG, GAP = 0.05, 0.002, 0.02

    def serve(self, script: Script, payload: bytes, output: _Output, out_fd: int) -> None:
        request = json.loads(payload)
        if script.lua != "luajit":
            _send(out_fd, FAILED, json.dumps({"message": "the native queue worker runs on LuaJIT only"}).encode())
            return
        try:
            fds = _take_fds(request["pid"], request["sock"], request["shm"])
        except OSError as exc:
            _send(out_fd, FAILED, json.dumps({"message": f"cannot take the queue's socket: {exc}"}).encode())
            return
        try:
            self._serve(script, request, fds, output, out_fd)
        finally:
            for fd in fds:
                os.close(fd)

    def _load(self, script: Script, request: dict, fds):
        g = script._lua.globals()
        flags = script._lua.table_from({k.encode(): v for k, v in results.lua_table().items()})
        driver = g.loadstring(_lua_source("nfqueue.lua"), b"=nfqueue.lua")(script._engine, flags)
        r = driver.setup(fds[0], fds[1], request["queue"], request["bit"], request["outdev"],
                         request["copy_range"], request["ring"], bytes.fromhex(request["eths"]),
                         bytes.fromhex(request["default_eth"]))
        ok, why = r if isinstance(r, tuple) else (r, None)
        if not ok:
            raise OSError(why.decode() if isinstance(why, bytes) else str(why))
        return driver

    def _serve(self, script: Script, request: dict, fds, output: _Output, out_fd: int) -> None:
        engine, driver = script._engine, self._load(script, request, fds)
        _send(out_fd, OK, b"{}")
        while True:
            if script._engine is not engine:   # the runtime was replaced (max_memory)
                engine, driver = script._engine, self._load(script, request, fds)
            r = script._enter(driver.run, self.IDLE, self.LAG, self.GAP)
            if r is None:                       # the runtime failed outside the script: a crash
                raise SystemExit(3)
            status, records, errs, nout, sockerr, packets = r
            if nout:
                script._drain_output()
            meta = {"status": status.decode(), "packets": int(packets)}
            if errs:
                meta["errors"] = [[seq, i, script._message(m), script._line(line)]
                                  for seq, blob in _error_blocks(errs) for i, m, line in _error_records(blob)]
            lines = output.new(script)
            if lines:
                meta["output"] = lines
            if sockerr:
                meta["socket_error"] = os.strerror(int(sockerr))
            meta_bytes = json.dumps(meta).encode()
            _send(out_fd, REPORT, b"".join([REPORT_HEAD.pack(len(meta_bytes)), meta_bytes, records or b""]))
            if meta["status"] == "stop":
                return


def _error_blocks(blob: bytes):
    """The driver's error blocks: (batch number, the runner's error records) each."""
    at = 0
    while at + 8 <= len(blob):
        seq, size = struct.unpack_from("<II", blob, at)
        yield seq, blob[at + 8:at + 8 + size]
        at += 8 + size


def _take_fds(pid: int, *fds: int) -> list[int]:
    """Copies of another process's file descriptors (pidfd_getfd, Linux 5.6)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    out = []
    try:
        for fd in fds:
            got = libc.syscall(438, pidfd, fd, 0)      # SYS_pidfd_getfd
            if got < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            out.append(got)
    except OSError:
        for fd in out:
            os.close(fd)
        raise
    finally:
        os.close(pidfd)
    return out


def main(argv: list[str]) -> int:
    parent_pid, memory_limit = int(argv[0]), int(argv[1])
    out_fd = os.dup(1)
    os.dup2(2, 1)          # stray prints must not break the framing
    inp = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if memory_limit:
        _limit_address_space(memory_limit)
    _send(out_fd, READY, b"")
    script, output, capture, queue = None, _Output(), _Capture(), _Queue()
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return 0
        kind, size = HEADER.unpack(head)
        payload = inp.read(size)
        if kind == COMPILE:
            script, reply = _compile(payload, output)
            _send(out_fd, OK if script is not None else FAILED, json.dumps(reply).encode())
        elif kind == BATCH and script is not None:
            _send(out_fd, OK, _batch(script, payload, output))
        elif kind == CAPTURE and script is not None:
            _send(out_fd, OK, json.dumps(capture.open(script, payload)).encode())
        elif kind == RANGE and script is not None:
            _send(out_fd, OK, capture.run(script, payload, output))
        elif kind == SERVE and script is not None:
            queue.serve(script, payload, output, out_fd)
        else:
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
