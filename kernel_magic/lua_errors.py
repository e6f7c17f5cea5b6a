"""Lua errors shown against the notebook cell: line number plus the line itself."""
from __future__ import annotations


def cell_line(cell_lines: list[str], line: int | None) -> str | None:
    """The text of cell line ``line`` (1-based, the %%packetscript line is line 1)."""
    if line is None or not (1 <= line <= len(cell_lines)):
        return None
    return cell_lines[line - 1]


def describe(message: str, line: int | None, cell_lines: list[str]) -> str:
    """'cell line 4: message' followed by the offending line, as a user reads it."""
    where = f"cell line {line}" if line is not None else "script"
    text = f"{where}: {message}"
    src = cell_line(cell_lines, line)
    if src is not None:
        text += f"\n    {line} | {src.rstrip()}"
    return text


def strip_location(message: str, name: str, line: int | None) -> str:
    """Drop a leading 'name:line:' that Lua puts in front of its messages."""
    for prefix in (f"{name}:{line}: ", f'[string "{name}"]:{line}: '):
        if line is not None and message.startswith(prefix):
            return message[len(prefix):]
    return message
