"""The replay backend: run a script over a pcap/pcapng file or a list of packets.

No privileges needed. Packets cross into Lua in batches (one call per few thousand
packets on LuaJIT), and scapy's dissection stays out of the hot path: files are read by
core.pcap (or, on LuaJIT, by the script's own process: backends/capture.py), and only frames
as bytes are handled here.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from packetscript_lab.core import pcap, results
from packetscript_lab.core.pcap import BATCH, ETHERNET, RAW_IP
from packetscript_lab.backends import capture
from packetscript_lab.judge import Judge
from packetscript_lab.script import Script

#: The input cannot be replayed: missing file, not a capture, unsupported link type, a
#: corrupt record. A capture that cannot be read and one that cannot be replayed are the
#: same error to the caller.
ReplayError = pcap.CaptureError


@dataclass
class ReplayResult:
    """Counts and output of one replay."""

    packets: int = 0
    verdicts: dict = field(default_factory=lambda: dict.fromkeys(results.ALL, 0))
    errors: int = 0
    modified: int = 0
    eth_changes: int = 0       # raw-IP input whose synthetic Ethernet header the script changed
    elapsed: float = 0.0
    linktype: int = ETHERNET
    script: Script | Judge | None = None
    # The wall-clock line (Judge): fresh processes started, kills for running past the
    # time limit, deaths of the script's process, packets not judged for lack of time.
    restarts: int = 0
    timeouts: int = 0
    crashes: int = 0
    unjudged: int = 0
    # Batches whose passing packets are not yet cut out as bytes: that happens on first
    # use of `output`, so a replay that only counts does not pay for it.
    _batches: list = field(default_factory=list, repr=False)
    _output: list = field(default_factory=list, repr=False)
    _output_times: list = field(default_factory=list, repr=False)
    # The native path writes the output to a pcap file (``out`` or a temporary one) and
    # reads it back only when ``output`` is asked for.
    _output_file: str | None = field(default=None, repr=False)
    _written: str | None = field(default=None, repr=False)

    @property
    def output(self) -> list:
        """The packets that pass (accept or continue), as changed, in the input's link type."""
        self._cut_batches()
        return self._output

    @property
    def output_times(self) -> list:
        """Their capture times, in seconds."""
        self._cut_batches()
        return self._output_times

    def _cut_batches(self) -> None:
        if self._output_file is not None:
            path, self._output_file = self._output_file, None
            _, batches = pcap.read(path)
            for frames, times in batches:
                self._output += frames
                self._output_times += [t / 1000 for t in times]
        for batch in self._batches:
            _collect_output(self, *batch)
        self._batches.clear()

    @property
    def pps(self) -> float:
        return self.packets / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def script_errors(self):
        return self.script.errors if self.script else []

    def as_dict(self) -> dict:
        """The CLI's --json object."""
        return {"packets": self.packets, "verdicts": dict(self.verdicts), "errors": self.errors,
                "modified": self.modified, "pps": round(self.pps, 1), "restarts": self.restarts,
                "timeouts": self.timeouts, "crashes": self.crashes, "unjudged": self.unjudged}

    def packets_out(self):
        """The output as scapy packets (dissected now: slow on large captures)."""
        from scapy.layers.inet import IP
        from scapy.layers.l2 import CookedLinux, Ether

        from scapy.layers.inet6 import IPv6

        cls = {ETHERNET: Ether, pcap.LINUX_SLL: CookedLinux}.get(self.linktype)
        if cls is not None:
            return [cls(data) for data in self.output]
        return [(IPv6 if data[:1] and data[0] >> 4 == 6 else IP)(data) for data in self.output]

    def write(self, path: str | os.PathLike) -> None:
        """Write the output packets to a pcap file with the input's link type and times."""
        if self._written is not None and self._output_file is not None:
            if os.path.abspath(self._written) != os.path.abspath(path):
                shutil.copyfile(self._written, path)
            return

        pcap.write_pcap(path, self.linktype, zip(self.output, self.output_times))


def _batches_from_packets(packets):
    """Lists of scapy packets or bytes. Link type from the first packet."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    linktype = ETHERNET
    if packets and not isinstance(packets[0], (bytes, bytearray)):
        if not isinstance(packets[0], Ether):
            if isinstance(packets[0], (IP, IPv6)):
                linktype = RAW_IP
            else:
                raise ReplayError(f"packets must start at Ether or IP, not {type(packets[0]).__name__}")

    def gen():
        for start in range(0, len(packets), BATCH):
            chunk = packets[start:start + BATCH]
            frames = [bytes(p) for p in chunk]
            times = [float(getattr(p, "time", start + i)) * 1000 for i, p in enumerate(chunk)]
            yield frames, times
    return linktype, gen()


# ---------------------------------------------------------------------- replay
def replay(script_or_source, packets_or_path, out=None, progress=False, keep_output=True,
           record=None, **script_kwargs) -> ReplayResult:
    """Run a script over a pcap/pcapng file or a list of scapy packets (or frames as bytes).

    Returns the counts per verdict (error verdicts included), the number of packets the
    script failed on and changed, and the passing packets as modified. ``out`` writes them
    to a pcap file. A source is compiled into a :class:`Judge` (its own process, with a
    wall-clock limit per packet; ``script_kwargs`` go to it: Script's options and
    ``time_limit``, ``batch_time_limit``), which is closed when the replay ends. A Script
    or Judge given is used as it is (a Script runs in this process, unwatched).
    ``record=DIR`` also writes a record of the run (packetscript_lab.recording).
    """
    if record is not None:
        from packetscript_lab.recording import replay_recorded
        return replay_recorded(script_or_source, packets_or_path, record, out, **script_kwargs)
    if isinstance(script_or_source, (Script, Judge)):
        script, own = script_or_source, None
    else:
        script = own = Judge(script_or_source, **script_kwargs)
    try:
        return _replay(script, packets_or_path, out, progress, keep_output)
    finally:
        if own is not None:
            own.close()


def _replay(script, packets_or_path, out, progress, keep_output) -> ReplayResult:
    before = script.counts() if isinstance(script, Judge) else None
    if isinstance(packets_or_path, (str, os.PathLike)) and capture.usable(script, packets_or_path):
        result = _replay_native(script, Path(packets_or_path), out, progress, keep_output, before)
        if result is not None:
            return result
    if isinstance(packets_or_path, (str, os.PathLike)):
        path = Path(packets_or_path)
        linktype, batches = pcap.read(path)
        total_bytes = path.stat().st_size
    else:
        linktype, batches = _batches_from_packets(list(packets_or_path))
        total_bytes = None
    to_eth, from_eth = pcap.framer(linktype)

    result = ReplayResult(linktype=linktype, script=script)
    bar = _progress_bar(progress, total_bytes)
    codes_seen = [0] * results.CODES
    started = time.perf_counter()
    with _cyclic_gc_paused():
        _run_batches(script, batches, to_eth, from_eth, keep_output, result, codes_seen, bar)
    result.elapsed = time.perf_counter() - started
    if bar is not None:
        bar.close()
    _tally(result, codes_seen, to_eth is not None)
    if before is not None:
        for key, value in script.counts().items():
            setattr(result, key, value - before[key])
    if out is not None:
        result.write(out)
    return result


def _replay_native(judge, path, out, progress, keep_output, before):
    """The capture read, judged and written inside the judge's process (LuaJIT); None when
    its driver does not read this file (then the Python reader does)."""
    out_path = None
    if out is not None:
        out_path = str(out)
        open(out_path, "wb").close()
    elif keep_output:
        fd, out_path = tempfile.mkstemp(prefix="packetscript-replay-", suffix=".pcap")
        os.close(fd)
    native = capture.NativeReplay(judge, path, out_path)
    try:
        linktype, start = native.start()
    except capture.Fallback:
        if out is None and out_path:
            capture.unlink_quietly(out_path)
        return None
    result = _run_native(judge, native, path, out, out_path, linktype, start, progress, before)
    if result is None and out is None and out_path:
        capture.unlink_quietly(out_path)
    return result


def _run_native(judge, native, path, out, out_path, linktype, start, progress, before):
    pcap.link(linktype, path)
    if out_path:
        capture.write_pcap_header(out_path, linktype)
    result = ReplayResult(linktype=linktype, script=judge)
    if out is None and out_path:
        capture.remove_later(result, out_path)
    if out_path:
        result._output_file = result._written = out_path
    bar = _progress_bar(progress, path.stat().st_size)
    started = time.perf_counter()
    try:
        ended = native.run(start, bar.update if bar is not None else None)
        if ended is not None:
            why, offset, out_offset = ended
            if why != "broken":
                _raise_the_problem(path)
                if native.packets == 0:
                    # Records the driver does not read (pcapng simple packet blocks, empty
                    # packets) from the start: the Python reader replays the file instead.
                    return None
                raise ReplayError(f"{path}: cannot replay past byte offset {offset} ({why}) on the "
                                  "LuaJIT fast path; replay it with --lua 5.1 or rewrite it with editcap")
            _unjudged_rest(judge, path, native, out_path, out_offset)
    finally:
        if bar is not None:
            bar.close()
    result.elapsed = time.perf_counter() - started
    result.packets = native.packets
    _tally(result, native.codes, linktype not in (ETHERNET,))
    if before is not None:
        for key, value in judge.counts().items():
            setattr(result, key, value - before[key])
    return result


def _raise_the_problem(path: Path):
    """The native driver stopped at a record it does not take for a packet: the checked
    reader names the problem (packet number, byte offset, what is wrong), if it finds one."""
    _linktype, batches = pcap.read(path)
    for _batch in batches:
        pass


def _unjudged_rest(judge, path, native, out_path, out_offset):
    """No process could be started to go on: the rest gets the error verdict, unjudged,
    as Judge.run_many gives it."""
    _linktype, batches = pcap.read(path)
    skip, code = native.packets, judge._error_code
    with open(out_path, "r+b") if out_path else contextlib.nullcontext() as f:
        if f is not None:
            f.seek(out_offset)
            f.truncate()
        for frames, times in batches:
            if skip >= len(frames):
                skip -= len(frames)
                continue
            frames, times, skip = frames[skip:], times[skip:], 0
            native.codes[code] += len(frames)
            native.packets += len(frames)
            for _ in frames:
                judge._error(judge._broken or "not judged: the script's process could not be started")
            judge.unjudged += len(frames)
            if f is not None and results.passes(code):
                for data, t in zip(frames, times):
                    f.write(pcap.pcap_record(data, t / 1000))


def _tally(result, codes_seen, framed):
    result.verdicts = {v: sum(n for c, n in enumerate(codes_seen) if c & results.VERDICT == i)
                       for i, v in enumerate(results.BY_CODE)}
    result.errors = sum(n for c, n in enumerate(codes_seen) if c & results.FAILED)
    # Raw-IP and cooked captures cannot keep a changed Ethernet header: only what follows counts.
    changed = results.BODY_CHANGED if framed else results.CHANGED
    result.modified = sum(n for c, n in enumerate(codes_seen) if c & changed)
    result.eth_changes = (sum(n for c, n in enumerate(codes_seen) if c & results.ETH_CHANGED)
                          if framed else 0)


def _run_batches(script, batches, to_eth, from_eth, keep_output, result, codes_seen, bar):
    def done(frames, eth_frames, times, codes, blob):
        for code in set(codes):
            codes_seen[code] += codes.count(code)
        if keep_output:
            result._batches.append((frames, eth_frames, times, codes, blob, from_eth))
        result.packets += len(frames)
        if bar is not None:
            bar.update(sum(map(len, frames)) + 16 * len(frames))

    if not isinstance(script, Judge):
        for frames, times in batches:
            eth_frames = [to_eth(d) for d in frames] if to_eth else frames
            codes, blob, _errors = script.run_many(eth_frames, times)
            done(frames, eth_frames, times, codes, blob)
        return
    # A Judge works in its own process: the next batch is read while it judges this one.
    waiting = None
    try:
        for frames, times in batches:
            eth_frames = [to_eth(d) for d in frames] if to_eth else frames
            if waiting is not None:
                batch, waiting = waiting, None
                done(*batch, *script.collect()[:2])
            script.submit(eth_frames, times)
            waiting = (frames, eth_frames, times)
        if waiting is not None:
            batch, waiting = waiting, None
            done(*batch, *script.collect()[:2])
    finally:
        if waiting is not None:       # the capture broke off: leave the judge ready for more
            script.collect()


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Replay makes millions of short-lived objects and no reference cycles; the cyclic
    collector would rescan the growing output list over and over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _offsets(frames):
    return itertools.accumulate(map(len, frames), initial=0)


def _collect_output(result, frames, eth_frames, times, codes, blob, from_eth):
    """Append the passing packets (as changed) to result.output, in the input's form."""
    verdict, changed, body_changed = results.VERDICT, results.CHANGED, results.BODY_CHANGED
    result._output_times += [t / 1000 for t, c in zip(times, codes) if c & verdict]
    if blob is None:
        result._output += [f for f, c in zip(frames, codes) if c & verdict]
    elif from_eth is None:
        result._output += [blob[o:o + len(f)] if c & changed else f
                           for f, c, o in zip(frames, codes, _offsets(frames)) if c & verdict]
    else:
        result._output += [from_eth(f, blob[o:o + len(ef)]) if c & body_changed else f
                           for f, ef, c, o in zip(frames, eth_frames, codes, _offsets(eth_frames))
                           if c & verdict]


def _progress_bar(progress, total_bytes):
    if not progress or total_bytes is None or total_bytes < 4 << 20:
        return None
    from tqdm import tqdm

    # disable=None: only on a terminal, never into logs or pipes
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="replay", leave=False, disable=None)
