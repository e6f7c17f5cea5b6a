"""Cells cached by a hash of (source, options), as %%cython caches its modules.

What is kept per hash: the compile result (an unchanged cell that failed fails again at
once, with the same message) and the kernel-portability findings of ``--profile kernel``
cells. Each run still gets a freshly compiled Script, because a script's globals are its
state and a re-run cell starts from a clean state, as a reloaded xt_LUA rule does. The
Script lives in its own watched process (a Judge): a cell whose top level or packet hangs in
a C function, or kills its Lua runtime, costs a verdict and a restart, not the kernel.
Generated replay traffic and parsed pcaps are memoised here as well.
"""
from __future__ import annotations

import collections
import dataclasses

from IPython.core.error import UsageError

from kernel_magic import lua_errors
from kernel_magic.options import RunOptions, cache_key

MAX_ENTRIES = 64


@dataclasses.dataclass
class CachedCell:
    key: str
    error: str | None = None
    findings: list | None = None      # portability check, --profile kernel only
    compiles: int = 0


class CellCache:
    def __init__(self):
        from packetscript_lab.judge import keep_process_ready
        keep_process_ready()       # a re-run cell then costs its compile, not a start-up
        self._cells: collections.OrderedDict[str, CachedCell] = collections.OrderedDict()
        self._memo: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._cells)

    def get(self, source: str, options: RunOptions) -> CachedCell | None:
        return self._cells.get(cache_key(source, options))

    def compile(self, source: str, options: RunOptions, cell_lines: list[str]):
        """A fresh Judge for this cell, or UsageError showing the offending cell line."""
        from packetscript_lab import Judge, ScriptError

        key = cache_key(source, options)
        cell = self._cells.get(key)
        if cell is not None and cell.error is not None:
            self._cells.move_to_end(key)
            raise UsageError(cell.error)
        if cell is None:
            cell = CachedCell(key)
            self._store(key, cell)
        try:
            script = Judge(source, name=options.name, line_offset=1, **options.script_kwargs())
        except ScriptError as exc:
            cell.error = self.describe_script_error(exc, cell_lines)
            raise UsageError(cell.error) from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        cell.compiles += 1
        return script

    @staticmethod
    def describe_script_error(exc, cell_lines: list[str]) -> str:
        line = getattr(exc, "line", None)
        message = getattr(exc, "message", None) or str(exc)
        name = getattr(exc, "name", "script")
        message = lua_errors.strip_location(message, name, line)
        return f"Lua error in {name!r}, " + lua_errors.describe(message, line, cell_lines)

    def findings(self, source: str, options: RunOptions, check):
        """Portability findings for this cell, computed once per hash with ``check(source)``."""
        key = cache_key(source, options)
        cell = self._cells.get(key) or self._store(key, CachedCell(key))
        if cell.findings is None:
            cell.findings = list(check(source))
        return cell.findings

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
            while len(self._memo) > 8:
                self._memo.popitem(last=False)
        return self._memo[key]

    def _store(self, key: str, cell: CachedCell) -> CachedCell:
        self._cells[key] = cell
        while len(self._cells) > MAX_ENTRIES:
            self._cells.popitem(last=False)
        return cell
