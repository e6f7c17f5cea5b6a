"""Messages between a Lab client and its lab process over a stream socket.

Each message is a pickled dict preceded by its length (4 bytes, big-endian). Both ends are
the same program started by the same user, so pickle is acceptable; daemon labs also check
the peer's credentials before accepting a connection.

client -> lab:  {"id": n, "cmd": name, "args": {...}}   (name: a command of commands.py)
lab -> client:  {"id": n, "ok": result} | {"id": n, "err": encoded error}
                {"event": "ready" | "fatal" | "sample" | "error" | "script_error", ...}
"""
from __future__ import annotations

import pickle
import socket
import struct
import threading

from .errors import LabError

_LEN = struct.Struct("!I")
MAX_MESSAGE = 256 << 20


class Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._wlock = threading.Lock()

    @staticmethod
    def encode(msg: dict) -> bytes:
        """One message as the bytes that go on the wire (length prefix included)."""
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        return _LEN.pack(len(data)) + data

    def send(self, msg: dict) -> None:
        self.send_encoded(self.encode(msg))

    def send_encoded(self, data: bytes) -> None:
        with self._wlock:
            self.sock.sendall(data)

    def recv(self) -> dict | None:
        """The next message, or None at end of stream."""
        head = self._read(_LEN.size)
        if head is None:
            return None
        (n,) = _LEN.unpack(head)
        if n > MAX_MESSAGE:
            raise LabError(f"message of {n} bytes is too large")
        body = self._read(n)
        if body is None:
            return None
        return pickle.loads(body)

    def _read(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, OSError):
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def encode_error(exc: BaseException) -> dict:
    """An exception as plain data: ScriptErrors keep message, line and name."""
    kind = type(exc).__name__
    if kind == "ScriptError":
        return {"type": "ScriptError", "message": getattr(exc, "message", str(exc)),
                "line": getattr(exc, "line", None), "name": getattr(exc, "name", "script")}
    if isinstance(exc, (LabError, ValueError, KeyError, OSError, TimeoutError)):
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return {"type": "ValueError" if isinstance(exc, ValueError) else "LabError",
                "message": str(text)}
    return {"type": "LabError", "message": f"{kind}: {exc}"}


def decode_error(err: dict) -> BaseException:
    if err["type"] == "ScriptError":
        from packetscript_lab.script import ScriptError

        return ScriptError(err["message"], err["line"], err["name"])
    if err["type"] == "ValueError":
        return ValueError(err["message"])
    return LabError(err["message"])
