"""The replay backend: run a script over a pcap/pcapng file or a list of packets.

No privileges needed. Packets cross into Lua in batches (one call per few thousand
packets on LuaJIT), and scapy's dissection stays out of the hot path: files are read with
its raw reader, and only frames as bytes are handled here.
"""
from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import logging
import os
import re
import shutil
import tempfile
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from packetscript_lab.core import results as verdicts
from packetscript_lab.backends import capture
from packetscript_lab.judge import Judge
from packetscript_lab.script import DEFAULT_ETH_HEADER, Script

BATCH = 4096

# Link types (pcap LINKTYPE_*) and how to reach an Ethernet frame from them.
ETHERNET, RAW_IP, LINUX_SLL, LINUX_SLL2 = 1, 101, 113, 276
_RAW_IP_TYPES = {12, 14, RAW_IP, 228, 229}     # DLT_RAW variants, LINKTYPE_IPV4 and _IPV6
scapy_log = logging.getLogger("scapy.runtime")
_SUPPORTED = "Ethernet (1), raw IP (12, 14, 101, 228, 229), Linux cooked SLL (113) and SLL2 (276)"
_ETH6_HEADER = DEFAULT_ETH_HEADER[:12] + b"\x86\xdd"


def _eth_for_ip(data: bytes) -> bytes:
    """The synthetic Ethernet header for a raw IP packet: IPv6 by its version nibble."""
    return _ETH6_HEADER if data[:1] and data[0] >> 4 == 6 else DEFAULT_ETH_HEADER


class ReplayError(Exception):
    """The input cannot be replayed: missing file, not a capture, unsupported link type."""


@dataclass
class ReplayResult:
    """Counts and output of one replay."""

    packets: int = 0
    verdicts: dict = field(default_factory=lambda: dict.fromkeys(verdicts.ALL, 0))
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
            _, batches = _open_capture(Path(path))
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

        cls = {ETHERNET: Ether, LINUX_SLL: CookedLinux}.get(self.linktype)
        if cls is not None:
            return [cls(data) for data in self.output]
        return [(IPv6 if data[:1] and data[0] >> 4 == 6 else IP)(data) for data in self.output]

    def write(self, path: str | os.PathLike) -> None:
        """Write the output packets to a pcap file with the input's link type and times."""
        from scapy.utils import RawPcapWriter

        if self._written is not None and self._output_file is not None:
            if os.path.abspath(self._written) != os.path.abspath(path):
                shutil.copyfile(self._written, path)
            return

        with RawPcapWriter(str(path), linktype=self.linktype, sync=False) as writer:
            writer.write_header(None)
            for data, ts in zip(self.output, self.output_times):
                sec = int(ts)
                writer.write_packet(data, sec=sec, usec=int(round((ts - sec) * 1e6)))


# ---------------------------------------------------------------------- link layers
def _framer(linktype: int):
    """(to_ethernet, from_ethernet) for a link type: frames cross into the script as
    Ethernet and come back in the input's own form."""
    if linktype == ETHERNET:
        return None, None
    if linktype in _RAW_IP_TYPES:
        return (lambda data: _eth_for_ip(data) + data), (lambda orig, frame: frame[14:])
    if linktype in (LINUX_SLL, LINUX_SLL2):
        hdr = 16 if linktype == LINUX_SLL else 20
        proto_at = 14 if linktype == LINUX_SLL else 0

        def to_eth(data):
            return DEFAULT_ETH_HEADER[:12] + data[proto_at:proto_at + 2] + data[hdr:]

        def from_eth(orig, frame):
            return orig[:hdr] + frame[14:]
        return to_eth, from_eth
    raise ReplayError(f"link type {linktype} is not supported: replay reads {_SUPPORTED}")


def _read_file(path: Path):
    """Yield (linktype, batches of (data, time)) from a pcap or pcapng file."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapReader

    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    if path.is_dir():
        raise ReplayError(f"{path} is a directory, not a capture file")
    try:
        reader = RawPcapReader(str(path))
    except (Scapy_Exception, EOFError, OSError, ValueError) as exc:
        raise ReplayError(f"{path} is not a pcap or pcapng file ({exc}); "
                          "write captures with tcpdump -w, Wireshark or scapy's wrpcap") from None
    return reader


def read_capture(path: str | os.PathLike):
    """(link type, batches of (frames as bytes, times in ms)) of a pcap or pcapng file.

    The one checked reader of capture files (replay, the notebook's ``--pcap``, the lab's
    ``replay_pcap``): raises ReplayError for a missing, unreadable or corrupt file, naming
    the packet and byte offset where it goes wrong, and never skips a record.
    """
    return _open_capture(Path(path))


# libpcap's largest packet for any link type: a record header claiming more is not a record.
MAX_RECORD = 262144
_SCAPY_MTU = 0xFFFF        # scapy's readers keep at most this many bytes of a packet


def _open_capture(path: Path):
    """(link type, batches of (frames, times in ms)) of a pcap or pcapng file.

    Every record is accounted for: a record that is not a packet (a header claiming more
    bytes than any packet has, an empty all-zero header as in a sparse or overwritten file,
    a packet cut short, a pcapng packet naming an interface the file never declared) stops
    the replay with ``corrupt capture at packet N (byte offset X)``, instead of a
    library warning and a skipped packet, or minutes spent reading zeros.
    """
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader

    reader = _read_file(path)
    pcapng = isinstance(reader, RawPcapNgReader)
    packets = iter(reader)
    read = [0]      # pcapng packets read so far, for the position of a problem
    problems = _ScapyReadProblems(lambda: (read[0] + 1, _tell(reader)))
    # First in line: scapy's own filter silences a warning repeated within seconds, which
    # would let the second replay of a bad file in one process skip packets silently.
    scapy_log.filters.insert(0, problems)
    try:
        first = next(packets, None)
    except (Scapy_Exception, ValueError, struct.error) as exc:
        scapy_log.removeFilter(problems)
        reader.close()
        raise ReplayError(f"{path}: corrupt capture ({exc})") from None
    if first is None:
        scapy_log.removeFilter(problems)
        reader.close()
        if problems.messages:
            raise _problem_error(path, problems.messages[0])
        return getattr(reader, "linktype", ETHERNET), iter(())
    linktype = first[1].linktype if pcapng else reader.linktype

    def pcap_batches():
        done, offset = 0, 24                 # packets read; byte offset of the next record
        per_ms = 1e6 if getattr(reader, "nano", False) else 1e3   # ns or µs pcap
        chunk = [first] + list(itertools.islice(packets, BATCH - 1))
        while chunk:
            frames = [d for d, _ in chunk]
            data, meta = chunk[-1]
            # The common case costs a few C-speed passes; only a suspect batch is walked.
            if problems.messages or not all(frames) or len(data) < min(meta.caplen, _SCAPY_MTU):
                _check_pcap_records(path, chunk, done, offset, problems)
            if max(map(len, frames)) >= _SCAPY_MTU:    # scapy kept only part of a big packet
                offset += sum(16 + m.caplen for _, m in chunk)
            else:
                offset += 16 * len(chunk) + sum(map(len, frames))
            yield frames, [sec * 1000.0 + frac / per_ms for _, (sec, frac, _w, _c) in chunk]
            done += len(chunk)
            chunk = list(itertools.islice(packets, BATCH))
        if not isinstance(reader.f, gzip.GzipFile) and offset < path.stat().st_size:
            raise ReplayError(f"{path}: corrupt capture at packet {done + 1} (byte offset {offset}): "
                              f"{path.stat().st_size - offset} bytes after packet {done} are not "
                              "a whole record: the file is truncated")

    def pcapng_batches():
        frames, times = [], []
        for data, meta in itertools.chain([first], packets):
            if problems.messages:
                break
            if meta.linktype != linktype:
                raise ReplayError(f"{path}: mixes link types {linktype} and {meta.linktype}; "
                                  "replay one interface at a time (split it with editcap or tshark)")
            read[0] += 1
            frames.append(data)
            # A simple packet block has no time: 0.
            times.append(0.0 if meta.tshigh is None else ((meta.tshigh << 32) | meta.tslow) * 1000 / meta.tsresol)
            if len(frames) == BATCH:
                yield frames, times
                frames, times = [], []
        if problems.messages:
            raise _problem_error(path, problems.messages[0])
        if frames:
            yield frames, times

    def batches():
        try:
            yield from (pcapng_batches() if pcapng else pcap_batches())
        except (Scapy_Exception, ValueError, struct.error) as exc:
            raise ReplayError(f"{path}: corrupt capture ({exc})") from None
        finally:
            scapy_log.removeFilter(problems)
            reader.close()
    return linktype, batches()


def _tell(reader) -> int | None:
    try:
        return reader.f.tell()
    except (OSError, ValueError, AttributeError):
        return None


def _check_pcap_records(path: Path, chunk, done: int, offset: int, problems) -> None:
    """Raise for the first record of a batch that is not a packet."""
    for i, (data, meta) in enumerate(chunk):
        at = f"{path}: corrupt capture at packet {done + i + 1} (byte offset {offset})"
        if meta.caplen > MAX_RECORD:
            raise ReplayError(f"{at}: its record header claims {meta.caplen} captured bytes, more "
                              f"than any packet has ({MAX_RECORD}): the file is corrupt")
        if not data and meta.wirelen == 0:
            raise ReplayError(f"{at}: an empty record (a header of zeros): from here on the file "
                              "holds no packets (a sparse, preallocated or overwritten file?)")
        if len(data) < min(meta.caplen, _SCAPY_MTU):
            raise ReplayError(f"{at}: the packet is cut short ({len(data)} of {meta.caplen} "
                              "bytes): the file is truncated")
        offset += 16 + meta.caplen
    if problems.messages:
        raise _problem_error(path, problems.messages[0])


_UNDECLARED = re.compile(r"invalid interface id (\d+)/(\d+)")


def _problem_error(path: Path, problem) -> ReplayError:
    """A ReplayError from what scapy complained about, and where."""
    message, packet, offset = problem
    near = f" (near byte offset {offset})" if offset is not None else ""
    m = _UNDECLARED.search(message)
    if m:
        return ReplayError(
            f"{path}: corrupt capture at packet {packet}{near}: it names interface {m.group(1)}, "
            f"but the file declares only {m.group(2)} interface(s) before it; every pcapng "
            "packet needs an Interface Description Block for its interface (was the file cut "
            "from a larger capture or concatenated? rewrite it with editcap or tshark)")
    return ReplayError(f"{path}: corrupt capture at packet {packet}{near}: {message}: "
                       "the file is truncated or corrupt")


class _ScapyReadProblems(logging.Filter):
    """scapy logs a cut or broken record (and skips it, or ends the capture there);
    collect those messages with where they happened (instead of printing them), so that
    replay fails with them."""

    def __init__(self, position):
        super().__init__()
        self.position = position            # () -> (packet number, byte offset or None)
        self.messages: list[tuple[str, int, int | None]] = []

    def filter(self, record) -> bool:
        message = record.getMessage()
        if message.startswith("more Pcap"):     # scapy's mark of a repeated warning
            message = message[5:]
        if message.startswith("Pcap"):
            self.messages.append((message, *self.position()))
            return False
        return True


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
        linktype, batches = _open_capture(path)
        total_bytes = path.stat().st_size
    else:
        linktype, batches = _batches_from_packets(list(packets_or_path))
        total_bytes = None
    to_eth, from_eth = _framer(linktype)

    result = ReplayResult(linktype=linktype, script=script)
    bar = _progress_bar(progress, total_bytes)
    codes_seen = [0] * 64
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
    _framer(linktype)
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
    _linktype, batches = _open_capture(path)
    for _batch in batches:
        pass


def _unjudged_rest(judge, path, native, out_path, out_offset):
    """No process could be started to go on: the rest gets the error verdict, unjudged,
    as Judge.run_many gives it."""
    _linktype, batches = _open_capture(path)
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
            if f is not None and code & 3:
                for data, t in zip(frames, times):
                    sec, usec = divmod(round(t * 1000), 1_000_000)
                    f.write(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)


def _tally(result, codes_seen, framed):
    result.verdicts = {v: sum(n for c, n in enumerate(codes_seen) if c & 3 == i)
                       for i, v in enumerate(verdicts.BY_CODE)}
    result.errors = sum(n for c, n in enumerate(codes_seen) if c & 8)
    # Raw-IP and cooked captures cannot keep a changed Ethernet header: only what follows counts.
    changed = 32 if framed else 4
    result.modified = sum(n for c, n in enumerate(codes_seen) if c & changed)
    result.eth_changes = sum(n for c, n in enumerate(codes_seen) if c & 16) if framed else 0


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
    result._output_times += [t / 1000 for t, c in zip(times, codes) if c & 3]
    if blob is None:
        result._output += [f for f, c in zip(frames, codes) if c & 3]
    elif from_eth is None:
        result._output += [blob[o:o + len(f)] if c & 4 else f
                           for f, c, o in zip(frames, codes, _offsets(frames)) if c & 3]
    else:
        result._output += [from_eth(f, blob[o:o + len(ef)]) if c & 32 else f
                          for f, ef, c, o in zip(frames, eth_frames, codes, _offsets(eth_frames)) if c & 3]


def _progress_bar(progress, total_bytes):
    if not progress or total_bytes is None or total_bytes < 4 << 20:
        return None
    from tqdm import tqdm

    # disable=None: only on a terminal, never into logs or pipes
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="replay", leave=False, disable=None)
