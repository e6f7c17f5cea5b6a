"""Recorded runs: what a script saw and did, in files another person can open and replay.

A record is a directory:

- ``seen.pcapng``: every packet the script saw, as the Ethernet frame it was given, each with
  a packet comment ``#N verdict=accept changed=ip.daddr,ip.check error=...`` (pcapng
  opt_comment: Wireshark shows it, ``tshark -Y 'frame.comment contains "drop"'`` filters on it);
- ``left.pcapng``: the packets that left (accept or continue), as the script changed them,
  each commented with the number of the packet it came from;
- ``script.lua``: the script, with its SHA-256 in ``record.json``;
- ``record.json``: options (the random seed included, so ``nf.get_random()`` replays the
  same), backend and hook, topology, traffic, versions (Python, lupa and the Lua runtime,
  kernel, iptables), the summary, and one line per packet (verdict, changed fields, error,
  SHA-256 of its bytes after the script).

``verify(DIR)`` runs the recorded script again over ``seen.pcapng`` with the recorded options
and times and reports every packet whose verdict or bytes differ. A live record verifies too:
the script gets the same frames in the same order; a script whose decisions depend on what
the clock said between packets of one batch may differ, and verify says which packets.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from packetscript_lab.core import pcap
from packetscript_lab.core import results as _verdicts

RECORD_FORMAT = 1
SEEN, LEFT, SCRIPT, META = "seen.pcapng", "left.pcapng", "script.lua", "record.json"
# A record keeps at most this many packets: a live run is bounded, and so is the file.
MAX_PACKETS = 100_000


class RecordError(Exception):
    """A record that cannot be written or read back (the message says what to do)."""


@dataclass
class Entry:
    """One packet as the script saw it and what it did."""

    frame: bytes                 # the Ethernet frame the script was given
    verdict: str                 # accept, drop or continue
    after: bytes | None = None   # the frame after the script, when it changed
    error: str | None = None
    time: float = 0.0            # seconds (the time the script was given)
    changed: list = field(default_factory=list)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def comment_of(n: int, e: Entry) -> str:
    parts = [f"#{n}", f"verdict={e.verdict}"]
    if e.after is not None:
        parts.append("changed=" + (",".join(e.changed) or "bytes"))
    if e.error:
        parts.append(f"error={e.error}")
    return " ".join(parts)


def versions(lua: str = "luajit") -> dict:
    """Python, lupa and the Lua runtime, the kernel, and iptables, as they are here."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(),
           "kernel": platform.release()}
    try:
        import importlib
        import lupa
        from packetscript_lab.script import RUNTIMES

        out["lupa"] = getattr(lupa, "__version__", "?")
        rt = importlib.import_module(RUNTIMES[lua]).LuaRuntime()
        out["lua"] = rt.eval("jit and jit.version or _VERSION")
    except Exception as exc:          # a record is still worth writing without it
        out["lua"] = f"unknown ({exc})"
    try:
        from packetscript_lab.lab import programs

        res = subprocess.run([programs.find("iptables"), "--version"], capture_output=True,
                             text=True, timeout=10)
        out["iptables"] = (res.stdout or res.stderr).strip()
    except Exception as exc:
        out["iptables"] = f"not available ({exc})"
    from packetscript_lab import __version__

    out["packetscript_lab"] = __version__
    return out


def summarize(entries: list[Entry]) -> dict:
    counts = dict.fromkeys(_verdicts.ALL, 0)
    for e in entries:
        counts[e.verdict] += 1
    return {"packets": len(entries), "verdicts": counts,
            "modified": sum(e.after is not None for e in entries),
            "errors": sum(e.error is not None for e in entries)}


def check_target(directory) -> Path:
    """The record's directory, if it may be written: new, or an empty directory."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise RecordError(f"cannot record into {d}: it is a file; give a directory")
    if d.exists() and any(d.iterdir()):
        raise RecordError(f"cannot record into {d}: the directory is not empty; "
                          "give a new directory (a record is never overwritten)")
    return d


def write(directory, source: str, entries: list[Entry], *, options: dict, backend: str,
          hook: dict | None = None, topology=None, traffic=None, summary: dict | None = None,
          extra: dict | None = None) -> Path:
    """Write a record of ``entries`` into ``directory`` (created; must be empty or new)."""
    from packetscript_lab.core.fields import changed_fields

    d = check_target(directory)
    d.mkdir(parents=True, exist_ok=True)
    for e in entries:
        if e.after is not None and not e.changed:
            e.changed = changed_fields(e.frame, e.after) or ["length"]
    pcap.write_pcapng(d / SEEN, [(e.frame, e.time, comment_of(n, e)) for n, e in enumerate(entries, 1)])
    pcap.write_pcapng(d / LEFT, [(e.after if e.after is not None else e.frame, e.time,
                              f"from #{n} verdict={e.verdict}")
                             for n, e in enumerate(entries, 1) if e.verdict != _verdicts.DROP])
    (d / SCRIPT).write_text(source)
    meta = {
        "format": RECORD_FORMAT,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": backend, "hook": hook, "script_sha256": sha256(source.encode()),
        "options": options, "topology": topology, "traffic": traffic,
        "versions": versions(options.get("lua", "luajit")),
        "summary": summary if summary is not None else summarize(entries),
        "packets": [{"n": n, "verdict": e.verdict, "changed": e.changed, "error": e.error,
                     "sha256_after": sha256(e.after if e.after is not None else e.frame)}
                    for n, e in enumerate(entries, 1)],
        **(extra or {}),
    }
    (d / META).write_text(json.dumps(meta, indent=1, default=str))
    return d


def judge_entries(script, frames: list[bytes], times_s: list[float]) -> list[Entry]:
    """Run a Script or Judge over Ethernet frames, batch by batch, keeping each packet."""
    out: list[Entry] = []
    for start in range(0, len(frames), pcap.BATCH):
        chunk, ts = frames[start:start + pcap.BATCH], times_s[start:start + pcap.BATCH]
        codes, blob, errors = script.run_many(chunk, [t * 1000 for t in ts])
        offset = 0
        for i, (f, code) in enumerate(zip(chunk, codes)):
            after = blob[offset:offset + len(f)] if code & _verdicts.CHANGED and blob is not None else None
            offset += len(f)
            err = errors.get(i)
            out.append(Entry(f, _verdicts.verdict(code), after,
                             None if err is None else str(err), ts[i]))
    return out


def _frames_of(packets_or_path) -> tuple[list[bytes], list[float]]:
    """Ethernet frames and times (seconds, to the microsecond, as pcapng keeps them)."""
    from packetscript_lab.backends.replay import _batches_from_packets

    if isinstance(packets_or_path, (str, os.PathLike)):
        linktype, batches = pcap.read(packets_or_path)
    else:
        linktype, batches = _batches_from_packets(list(packets_or_path))
    to_eth, _ = pcap.framer(linktype)
    frames, times = [], []
    for fs, ms in batches:
        frames += [to_eth(f) for f in fs] if to_eth else list(fs)
        times += [round(t / 1000, 6) for t in ms]
        if len(frames) > MAX_PACKETS:
            raise RecordError(f"a record keeps at most {MAX_PACKETS} packets; cut the capture "
                              "(editcap -r) or record without --record")
    return frames, times


def record_replay(source: str, packets_or_path, directory, *, traffic=None, topology=None,
                  time_limit: float = 0.25, batch_time_limit: float = 3.0, **options):
    """Replay ``source`` over a capture (or packets) and record it. Returns (summary, path)."""
    from packetscript_lab.judge import Judge

    check_target(directory)
    options = dict(options)
    if options.get("seed") is None:
        options["seed"] = random.randrange(1, 2**31)     # kept, so verify draws the same numbers
    frames, times = _frames_of(packets_or_path)
    with Judge(source, time_limit=time_limit, batch_time_limit=batch_time_limit, **options) as j:
        entries = judge_entries(j, frames, times)
    summary = summarize(entries)
    src = os.fspath(packets_or_path) if isinstance(packets_or_path, (str, os.PathLike)) else "packets"
    path = write(directory, source, entries, options=options, backend="replay",
                 topology=topology, traffic=traffic if traffic is not None else {"input": src},
                 summary=summary, extra={"limits": {"time_limit": time_limit,
                                                    "batch_time_limit": batch_time_limit}})
    return summary, path


def replay_recorded(script_or_source, packets_or_path, directory, out=None, **options):
    """``replay(..., record=DIR)``: the replay's result, and the record written."""
    from packetscript_lab.backends.replay import ReplayResult
    from packetscript_lab.judge import Judge
    from packetscript_lab.script import Script

    if isinstance(script_or_source, (Script, Judge)):
        s = script_or_source
        options = {k: getattr(s, k) for k in ("lua", "profile", "on_error", "budget",
                                               "fix_checksums", "seed") if hasattr(s, k)}
        if s.seed is None:
            raise RecordError("a compiled Script or Judge without a seed cannot be recorded "
                              "reproducibly: give replay() the source, or compile with seed=N")
        source = s.source
    else:
        source = script_or_source
    summary, path = record_replay(source, packets_or_path, directory, **options)
    result = ReplayResult(packets=summary["packets"], verdicts=summary["verdicts"],
                          errors=summary["errors"], modified=summary["modified"], linktype=pcap.ETHERNET)
    frames, times = _frames_of(path / LEFT)
    result._output, result._output_times = frames, times
    result.record = path
    if out is not None:
        result.write(out)
    return result


@dataclass
class Verification:
    packets: int
    differences: list[dict]

    @property
    def ok(self) -> bool:
        return not self.differences

    def report(self) -> str:
        if self.ok:
            return f"all {self.packets} packets got the recorded verdicts and bytes"
        lines = [f"{len(self.differences)} of {self.packets} packets differ from the record:"]
        for d in self.differences[:50]:
            lines.append(f"  packet #{d['n']}: " + "; ".join(d["what"]))
        if len(self.differences) > 50:
            lines.append(f"  ... and {len(self.differences) - 50} more")
        return "\n".join(lines)


def load(directory) -> tuple[dict, str]:
    d = Path(directory)
    if not (d / META).is_file() or not (d / SEEN).is_file() or not (d / SCRIPT).is_file():
        raise RecordError(f"{d} is not a record: it needs {META}, {SEEN} and {SCRIPT} "
                          "(written by --record DIR)")
    try:
        meta = json.loads((d / META).read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{d / META} is not valid JSON: {exc}") from None
    if meta.get("format") != RECORD_FORMAT:
        raise RecordError(f"{d} has record format {meta.get('format')!r}; this version reads "
                          f"{RECORD_FORMAT}")
    source = (d / SCRIPT).read_text()
    if sha256(source.encode()) != meta.get("script_sha256"):
        raise RecordError(f"{d / SCRIPT} is not the recorded script: its SHA-256 differs from "
                          "record.json's script_sha256")
    return meta, source


def verify(directory) -> Verification:
    """Replay a record and compare each packet's verdict and bytes with what was recorded."""
    from packetscript_lab.judge import Judge

    meta, source = load(directory)
    frames, times = _frames_of(Path(directory) / SEEN)
    recorded = meta["packets"]
    if len(frames) != len(recorded):
        raise RecordError(f"{directory}: {SEEN} holds {len(frames)} packets but record.json "
                          f"lists {len(recorded)}")
    limits = meta.get("limits") or {}
    with Judge(source, **limits, **meta["options"]) as j:
        entries = judge_entries(j, frames, times)
    diffs = []
    for rec, e in zip(recorded, entries):
        what = []
        if rec["verdict"] != e.verdict:
            what.append(f"verdict {e.verdict}, recorded {rec['verdict']}")
        after = e.after if e.after is not None else e.frame
        if sha256(after) != rec["sha256_after"]:
            from packetscript_lab.core.fields import changed_fields
            changed = changed_fields(e.frame, after) if e.after is not None else []
            what.append("bytes differ from the recorded output"
                        + (f" (now changed: {', '.join(changed)}; recorded: "
                           f"{', '.join(rec['changed']) or 'none'})" if changed or rec["changed"] else ""))
        if (rec["error"] is None) != (e.error is None):
            what.append(f"error {e.error!r}, recorded {rec['error']!r}")
        if what:
            diffs.append({"n": rec["n"], "what": what})
    return Verification(len(entries), diffs)
