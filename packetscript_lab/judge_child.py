"""The judge's child process: ``python -m packetscript_lab.judge_child PARENT_PID MEMORY_LIMIT``.

Reads requests from stdin and writes replies to stdout in the framing of judge.py: one
compile (the script's source and options), then batches of packets. It holds one Script
and nothing else; the parent kills it when it runs too long and starts another.
"""
from __future__ import annotations

import array
import json
import os
import resource
import sys
import threading
import time

from packetscript_lab.judge import (BATCH, BATCH_HEAD, COMPILE, FAILED, HEADER, OK, READY,
                                    REPLY_HEAD)
from packetscript_lab.script import Script, ScriptError


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


def main(argv: list[str]) -> int:
    parent_pid, memory_limit = int(argv[0]), int(argv[1])
    out_fd = os.dup(1)
    os.dup2(2, 1)          # stray prints must not break the framing
    inp = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if memory_limit:
        _limit_address_space(memory_limit)
    _send(out_fd, READY, b"")
    script, output = None, _Output()
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
        else:
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
