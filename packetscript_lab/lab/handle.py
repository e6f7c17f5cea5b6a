"""``AttachedScript``: the notebook's handle on a script attached in a lab (``Lab.attach``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LabError

if TYPE_CHECKING:
    from .client import Lab


class AttachedScript:
    """A script attached to a hook of a lab host (returned by ``Lab.attach``): a run
    (``packetscript_lab.runs.RunHandle``) of the "nfqueue" or the "kernel" backend. The
    kernel module hands no packets back: a kernel run's ``recent()``, ``errors()`` and
    ``output()`` are empty (its errors go to the kernel log)."""

    def __init__(self, lab: "Lab", info: dict):
        self._lab = lab
        self.info = info
        self.name: str = info["name"]
        self.host: str = info["host"]
        self.table: str = info["table"]
        self.chain: str = info["chain"]
        self.backend: str = info["backend"]
        self.detached = False

    def __repr__(self) -> str:
        return (f"<AttachedScript {self.name!r} on {self.host} {self.table}/{self.chain}"
                f"{' (detached)' if self.detached else ''}>")

    def replace(self, source: str) -> None:
        """Compile ``source`` and swap it in between two packets (ScriptError leaves the old one)."""
        self._lab._call("replace", name=self.name, source=source)
        if self.info.get("keep"):
            # A record holds one script: the packets kept now were judged by two.
            self.info["replaced"] = True
            self.info["source"] = source

    def detach(self) -> dict:
        """Remove the rule, let queued packets finish, stop the worker. Returns the final stats."""
        if self.detached:
            return self._final
        # What the script said, read while the lab still holds it.
        self._final_errors, self._final_output = self.errors(), self.output()
        self._final = self._lab._call("detach", name=self.name)
        self.detached = True
        self._lab.attached.pop(self.name, None)
        return self._final

    def stats(self) -> dict:
        if self.detached:
            return dict(self._final)
        return self._lab._call("stats", name=self.name)

    def series(self) -> list[dict]:
        return list(self._lab._series.get(self.name, ()))

    def recent(self, limit: int | None = None) -> list[dict]:
        return [] if self.detached else self._lab._call("recent", name=self.name, limit=limit)

    def errors(self) -> list[dict]:
        return self._final_errors if self.detached else self._lab._call("errors", name=self.name)

    def output(self) -> list[str]:
        """Lines the script printed."""
        return self._final_output if self.detached else self._lab._call("output", name=self.name)

    def record(self, directory, traffic=None) -> "Path":
        """Write a record (docs/records.md) of the packets kept so far: attach with
        ``record=N`` to keep the latest N. Call before ``detach()``, which lets them go."""
        from packetscript_lab import recording

        if self.detached:
            raise LabError(f"{self.name} is detached: record before detach()")
        if self.info.get("backend") != "nfqueue":
            raise LabError("only scripts attached through NFQUEUE can be recorded: the kernel "
                           "module's rules hand no packets back")
        if not self.info.get("keep"):
            raise LabError(f"{self.name} keeps no packets: attach it with record=N (packets to keep)")
        entries = [recording.Entry(before, verdict, after, error, t)
                   for t, before, after, verdict, error in
                   self._lab._call("recorded", name=self.name)]
        hook = {k: self.info.get(k) for k in ("host", "table", "chain", "match", "backend")}
        return recording.write(directory, self.info["source"], entries,
                               options=self.info["options"], backend="nfqueue", hook=hook,
                               topology=self._lab.description, traffic=traffic,
                               extra={"replaced": self.info.get("replaced", False),
                                      "stats": self.stats()})
