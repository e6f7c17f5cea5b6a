"""Compile a PacketScript-style Lua script and run it on packets.

A :class:`Script` owns one Lua runtime (lupa) with the packet API loaded, a sandboxed
environment for the user's code, and the user's globals, which persist between packets.
"""
from __future__ import annotations

import array
import importlib
import re
import time
from dataclasses import dataclass, field
from importlib import resources


from packetscript_lab.core import protocols, results
from packetscript_lab.core.netutil import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, checked_eth_header, eth_header
from packetscript_lab.core.pcap import DEFAULT_ETH_HEADER
from packetscript_lab.core.results import BY_CODE, CHANGED, FAILED, ETH_CHANGED, BODY_CHANGED, PRINTED

RUNTIMES = {"luajit": "lupa.luajit21", "5.1": "lupa.lua51", "5.4": "lupa.lua54"}
PROFILES = ("lab", "kernel")
ON_ERROR = {v: results.CODE[v] for v in (results.DROP, results.ACCEPT)}
MAX_KEPT_ERRORS = 20
MAX_OUTPUT_LINES = 1000
# Lua memory beyond max_memory that only the engine's own work may use: handing a packet
# over or a result back must never fail outside a protected call (that aborts the process).
MEMORY_HEADROOM = 48 << 20


class ScriptError(Exception):
    """The script does not compile, or its top level fails, or an option is wrong."""

    def __init__(self, message: str, line: int | None = None, name: str = "script"):
        self.message, self.line, self.name = message, line, name
        where = f"{name}:{line}: " if line else f"{name}: "
        super().__init__(where + message)


@dataclass
class ScriptRuntimeError:
    """A failure of the script on one packet (kept for the first few distinct errors)."""

    message: str
    line: int | None
    count: int = 1

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class RunResult:
    """What a script did with one packet."""

    __slots__ = ("verdict", "data", "modified", "error", "eth_modified")

    def __init__(self, verdict, data, modified, error=None, eth_modified=False):
        self.verdict, self.data, self.modified = verdict, data, modified
        self.error, self.eth_modified = error, eth_modified

    def __repr__(self) -> str:
        extra = f", error={self.error}" if self.error else ""
        return f"RunResult({self.verdict}, modified={self.modified}{extra})"


def _lua_source(name: str) -> bytes:
    return resources.files("packetscript_lab").joinpath("lua", name).read_bytes()


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


_PROTOCOLS_LUA = protocols.lua_source().encode()     # the protocol table, for packet.lua


def _synthetic_headers(header: bytes) -> tuple[bytes, bytes]:
    """The header run_ip puts in front of an IPv4 and of an IPv6 packet: its MACs, each
    version's EtherType."""
    dst, src = header[:6], header[6:12]
    return eth_header(dst, src, ETH_P_IP), eth_header(dst, src, ETH_P_IPV6)


def _error_records(blob: bytes):
    """The batch errors the runner packs as "index:line:length:message" records."""
    pos, end = 0, len(blob or b"")
    while pos < end:
        i_end = blob.index(b":", pos)
        l_end = blob.index(b":", i_end + 1)
        n_end = blob.index(b":", l_end + 1)
        size = int(blob[l_end + 1:n_end])
        yield int(blob[pos:i_end]), blob[n_end + 1:n_end + 1 + size], int(blob[i_end + 1:l_end])
        pos = n_end + 1 + size


def _join_batches(first, second, frames1, frames2, offset):
    """Two run_many results as one (a batch split to stay under MAX_BATCH_BYTES)."""
    (c1, b1, e1), (c2, b2, e2) = first, second
    blob = None
    if b1 is not None or b2 is not None:
        blob = (b1 if b1 is not None else b"".join(frames1)) + (b2 if b2 is not None else b"".join(frames2))
    errors = dict(e1)
    errors.update({offset + i: e for i, e in e2.items()})
    return c1 + c2, blob, errors


def _lua_error_text(exc: BaseException) -> str:
    """A failure of the Lua runtime itself (out of memory outside the script's own call)."""
    text = _text(exc.args[0] if exc.args else exc)
    if "memory" in text:
        return "the script's Lua runtime ran out of memory (max_memory)"
    return text[:500]


@dataclass
class _ErrorLog:
    """Counts failed packets and keeps the first distinct errors."""

    count: int = 0
    kept: list = field(default_factory=list)

    def add(self, message: str, line: int | None) -> ScriptRuntimeError:
        self.count += 1
        return self.note(message, line)

    def note(self, message: str, line: int | None = None) -> ScriptRuntimeError:
        """Keep an error without counting a failed packet (e.g. the runtime restarted)."""
        for err in self.kept:
            if err.message == message and err.line == line:
                err.count += 1
                return err
        err = ScriptRuntimeError(message, line)
        if len(self.kept) < MAX_KEPT_ERRORS:
            self.kept.append(err)
        return err


class Script:
    """A compiled PacketScript script.

    ``lua`` picks the runtime (LuaJIT is fast; 5.1 is the kernel's language version),
    ``profile`` the libraries the script sees (``lab``: base, string, table, math,
    coroutine; ``kernel``: what xt_LUA offers), ``budget`` the steps (loop iterations,
    calls, jumps back) one packet may take, ``on_error`` the verdict of a packet whose
    script failed, ``max_memory`` the bytes its Lua runtime may hold.
    """

    def __init__(self, source: str, *, name: str = "script", lua: str = "luajit",
                 profile: str = "lab", fix_checksums: bool = True, budget: int = 100_000,
                 on_error: str = "drop", function: str = "process_packet", state_id: int = 0,
                 line_offset: int = 0, seed: int | None = None, faithful: bool = False,
                 max_memory: int | None = 256 << 20):
        if lua not in RUNTIMES:
            raise ValueError(f"unknown Lua runtime {lua!r}: choose one of {', '.join(RUNTIMES)}")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: choose 'lab' or 'kernel'")
        if on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {on_error!r}: choose 'drop' or 'accept'")
        if not isinstance(budget, int) or budget < 0:
            raise ValueError("budget must be a whole number of steps (0 for no limit)")
        if faithful and profile != "kernel":
            raise ValueError("faithful=True imitates the kernel module: use it with profile='kernel'")
        self.source, self.name, self.lua, self.profile = source, name, lua, profile
        self.function, self.budget, self.on_error = function, budget, on_error
        self.line_offset, self.faithful = line_offset, faithful
        self.fix_checksums = fix_checksums and not faithful
        self.output: list[str] = []
        self.output_dropped = 0          # printed lines not kept (the bounds on print)
        self.last_error: ScriptRuntimeError | None = None
        self._errors = _ErrorLog()

        self.max_memory, self.seed, self.state_id = max_memory, seed, state_id
        self.state_resets = 0
        self._broken: str | None = None
        code, prelude = source, None
        if faithful:
            from packetscript_lab.xtlua import faithful as kernel_faithful
            try:
                code = kernel_faithful.transform(source)
            except kernel_faithful.FaithfulError as exc:
                raise ScriptError(exc.message, self._line(exc.line), name) from None
            prelude = kernel_faithful.FAITHFUL_PRELUDE
        self._code = code.encode()
        self._prelude = prelude.encode() if prelude else None
        self._eth_header = DEFAULT_ETH_HEADER
        ok, message, line = self._start()
        if not ok:
            raise ScriptError(message, line, name)

    def _start(self):
        """A fresh Lua runtime with the API, the script compiled and its top level run.

        Returns ``(ok, message, line)``.
        """
        runtime = importlib.import_module(RUNTIMES[self.lua])
        self._lua_error = runtime.LuaError      # each lupa runtime has its own error classes
        limit = self.max_memory + MEMORY_HEADROOM if self.max_memory else None
        self._lua = runtime.LuaRuntime(encoding=None, register_eval=False, register_builtins=False,
                                       max_memory=limit)
        g = self._lua.globals()
        loader = g.loadstring or g.load
        packet_api = loader(_lua_source("packet.lua"), b"=packet.lua")
        instrumenter = loader(_lua_source("instrument.lua"), b"=instrument.lua")()
        runner = loader(_lua_source("runner.lua"), b"=runner.lua")
        table = loader(_PROTOCOLS_LUA, b"=protocols")()
        cfg = self._lua.table_from({
            b"ffi": self.lua == "luajit", b"lua": self.lua.encode(), b"profile": self.profile.encode(),
            b"budget": self.budget, b"function": self.function.encode(), b"state_id": self.state_id,
            b"seed": self.seed, b"fix_checksums": self.fix_checksums,
            b"on_error_code": ON_ERROR[self.on_error], b"protocols": table,
            b"results": self._lua.table_from({k.encode(): v for k, v in results.lua_table().items()}),
            b"eth_hlen": ETH_HLEN,
            # Lua cuts long chunk names (and with them the line); errors are reported
            # under the script's own name by ScriptError and the CLI.
            b"chunkname": b"script",
        })
        self._engine = runner(packet_api, instrumenter, cfg)
        self._run_one = self._engine.run_one
        self._run_ip = self._engine.run_ip
        self._run_batch = self._engine.run_batch if self.lua == "luajit" else None
        self._engine.set_eth(*_synthetic_headers(self._eth_header))
        try:
            result = self._engine.compile(self._code, self._prelude)
        except self._lua_error as exc:       # out of memory on the top level
            return False, _lua_error_text(exc), None
        ok, message, line = (result if isinstance(result, tuple) else (result, None, None))
        if not ok:
            return False, self._message(message), self._line(line)
        self._drain_output()
        return True, None, None

    # ------------------------------------------------------------------ running
    @property
    def error_count(self) -> int:
        """How many packets the script failed on."""
        return self._errors.count

    @property
    def errors(self) -> list[ScriptRuntimeError]:
        """The first distinct errors, each with its line and how often it happened."""
        return list(self._errors.kept)

    def run(self, frame: bytes, ts: float | None = None) -> RunResult:
        """Run the script on one Ethernet frame. ``ts`` (seconds) feeds ``nf.get_time()``."""
        ms = int((time.monotonic() if ts is None else ts) * 1000)
        r = self._enter(self._run_one, frame, ms)
        if r is None:
            return RunResult(BY_CODE[ON_ERROR[self.on_error]], frame, False, self._runtime_failed(1))
        code, changed, out, emsg, eline, nout = r
        if nout:
            self._drain_output()
        error = self._errors.add(self._message(emsg), self._line(eline)) if emsg is not None else None
        return RunResult(BY_CODE[code], out if changed else frame, bool(changed), error)

    @property
    def eth_header(self) -> bytes:
        """The 14-byte Ethernet header that run_ip and judge_ip put in front of IP packets."""
        return self._eth_header

    @eth_header.setter
    def eth_header(self, header: bytes) -> None:
        self._eth_header = checked_eth_header(header)
        self._enter(self._engine.set_eth, *_synthetic_headers(self._eth_header))

    def judge_ip(self, packet: bytes, ts: float | None = None) -> tuple[int, bytes | None]:
        """The per-packet fast path for live backends: ``(code, new_packet)``.

        ``code & results.VERDICT`` is the verdict index into ``results.BY_CODE``;
        ``CHANGED`` (with ``BODY_CHANGED``): the IP packet changed and ``new_packet`` holds it
        (else None); ``FAILED``: the script failed (``last_error`` says how);
        ``ETH_CHANGED``: it changed the synthetic Ethernet header, which cannot travel with
        the packet.
        """
        r = self._enter(self._run_ip, packet, (time.monotonic() if ts is None else ts) * 1000)
        if r is None:
            self.last_error = self._runtime_failed(1)
            return ON_ERROR[self.on_error] | FAILED, None
        code, data = (r, None) if type(r) is int else r
        if code & PRINTED:
            self._drain_output()
        if code & FAILED:
            message, line = self._engine.last_error()
            self.last_error = self._errors.add(self._message(message), self._line(line))
        return code & ~PRINTED, data

    def run_ip(self, packet: bytes, ts: float | None = None) -> RunResult:
        """Run the script on an IP packet behind the synthetic header ``eth_header``.

        The result's data is the IP packet again; ``eth_modified`` tells that the script
        changed the Ethernet header, which cannot travel with an IP packet.
        """
        code, data = self.judge_ip(packet, ts)
        return RunResult(results.verdict(code), packet if data is None else data, data is not None,
                         self.last_error if code & FAILED else None, bool(code & ETH_CHANGED))

    # A batch crosses into Lua as one string: bounded, so the engine's headroom covers it.
    MAX_BATCH_BYTES = 8 << 20

    def run_many(self, frames: list[bytes], times_ms: list[float] | None = None):
        """Run the script over many Ethernet frames, crossing into Lua once (on LuaJIT).

        Returns ``(codes, blob, errors)``: one result code per frame (core.results: the
        verdict; CHANGED when the frame changed, ETH_CHANGED when its Ethernet header did,
        BODY_CHANGED when the bytes after the header did; FAILED when the script failed on
        it), the frames after
        the script back to back (None when none changed), and the errors by frame index.
        """
        if times_ms is None:
            times_ms = [time.monotonic() * 1000] * len(frames)
        # One frame takes the per-packet path: less set-up, and it matters for latency
        # when packets come one at a time.
        if self._run_batch is None or len(frames) == 1:
            return self._run_many_single(frames, times_ms)
        blob = b"".join(frames)
        if len(blob) > self.MAX_BATCH_BYTES:
            half = len(frames) // 2
            first, second = self.run_many(frames[:half], times_ms[:half]), self.run_many(frames[half:], times_ms[half:])
            return _join_batches(first, second, frames[:half], frames[half:], half)
        r = self._enter(self._run_batch, blob, array.array("i", map(len, frames)).tobytes(),
                        array.array("d", times_ms).tobytes(), len(frames))
        if r is None:
            error = self._runtime_failed(len(frames))
            code = ON_ERROR[self.on_error] | FAILED
            return bytes([code]) * len(frames), None, dict.fromkeys(range(len(frames)), error)
        codes, out, errs, nout = r
        if nout:
            self._drain_output()
        errors = {}
        for index, message, line in _error_records(errs):
            errors[index] = self._errors.add(self._message(message), self._line(line))
        return codes, out, errors

    def _run_many_single(self, frames, times_ms):
        codes, outs, errors = bytearray(len(frames)), [], {}
        for i, (frame, ms) in enumerate(zip(frames, times_ms)):
            r = self.run(frame, ms / 1000)
            code = ON_ERROR[self.on_error] if r.error else results.CODE[r.verdict]
            if r.error:
                errors[i] = r.error
                code |= FAILED
            elif r.modified:
                out = r.data
                code |= (CHANGED | (ETH_CHANGED if out[:ETH_HLEN] != frame[:ETH_HLEN] else 0)
                         | (BODY_CHANGED if out[ETH_HLEN:] != frame[ETH_HLEN:] else 0))
            codes[i] = code
            outs.append(r.data)
        changed = any(c & CHANGED for c in codes)
        return bytes(codes), b"".join(outs) if changed else None, errors

    # ------------------------------------------------------------------ the runtime itself
    def _enter(self, fn, *args):
        """Every call into Lua goes through here.

        The script's own failures come back as values; this catches what is left: the runtime
        failing outside the script's protected call (out of memory while handing a result
        over). Such a runtime, or one that the script left holding more than max_memory, is
        replaced by a fresh one (the script compiled again, its globals new). Returns None
        when the call did not complete.
        """
        if self._broken is not None:
            return None
        try:
            result = fn(*args)
        except self._lua_error as exc:
            self._restart(_lua_error_text(exc))
            return None
        if self.max_memory and self._lua.get_memory_used() > self.max_memory:
            self._trim()
        return result

    def _trim(self) -> None:
        try:
            self._engine.collect()
        except self._lua_error:
            pass
        if self._lua.get_memory_used() > self.max_memory:
            self._restart(f"the script holds more than max_memory ({self.max_memory >> 20} MiB)")

    def _restart(self, reason: str) -> None:
        self.state_resets += 1
        self._errors.note(f"{reason}: the script was restarted with fresh globals")
        ok, message, _line = self._start()
        if not ok:
            self._broken = f"{reason}; restarting the script failed: {message}"

    def _runtime_failed(self, packets: int) -> ScriptRuntimeError:
        """Count ``packets`` that the runtime could not judge; the error that says why."""
        message = self._broken or (self._errors.kept[-1].message if self._errors.kept
                                   else "the script's Lua runtime failed")
        error = None
        for _ in range(packets):
            error = self._errors.add(message, None)
        return error

    # ------------------------------------------------------------------ helpers
    def _line(self, line) -> int | None:
        return int(line) + self.line_offset if isinstance(line, (int, float)) and line > 0 else None

    def _message(self, message) -> str:
        """Lua's text, with the lines it mentions ("at line 3") shifted like our own."""
        text = _text(message)
        if self.line_offset:
            text = re.sub(r"\bat line (\d+)", lambda m: f"at line {int(m.group(1)) + self.line_offset}", text)
        return text

    def _drain_output(self) -> None:
        r = self._enter(self._engine.take_output)
        if r is None:
            return
        text, count, lost = r
        lines = _text(text).split("\n") if count else []
        room = max(MAX_OUTPUT_LINES - len(self.output), 0)
        self.output.extend(lines[:room])
        self.output_dropped += int(lost) + max(len(lines) - room, 0)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, lua={self.lua}, profile={self.profile})"
