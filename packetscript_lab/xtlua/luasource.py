"""Lua source helpers shared by the kernel checker and faithful mode.

A small Lua 5.x tokenizer (exact positions and lines, literal text kept, which luaparser's
AST loses: it turns `1e3` into 1000.0 and cannot read hex floats at all) and a parse
wrapper around luaparser that reports errors with a line number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from luaparser import ast as lua_ast
from luaparser import astnodes


@dataclass(frozen=True)
class Token:
    kind: str      # "name" | "number" | "string" | "op" | "comment"
    text: str
    start: int     # character index into the source
    line: int      # 1-based


class LuaSourceError(ValueError):
    """The source could not be tokenized or parsed. `line` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(f"{line}: {message}" if line else message)
        self.message = message
        self.line = line


# Longest operators first so that "..." wins over ".." and ".".
_OPS = ("...", "..", "==", "~=", "<=", ">=", "<<", ">>", "//", "::")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Lua's lexer reads a numeral greedily: digits, letters, dots and signs after an exponent.
_HEX_NUM = re.compile(r"0[xX](?:[0-9A-Fa-f.]|[pP][+-]?)*[0-9A-Za-z_]*")
_DEC_NUM = re.compile(r"(?:[0-9.]|[eE][+-]?)+[0-9A-Za-z_]*")
_LONG_OPEN = re.compile(r"\[(=*)\[")


def tokenize(source: str, *, comments: bool = False) -> list[Token]:
    """Tokens of a Lua chunk; comments only when asked. Raises LuaSourceError."""
    tokens: list[Token] = []
    i, line, n = 0, 1, len(source)
    if source.startswith("#"):              # a shebang line is skipped by Lua too
        i = source.find("\n")
        i = n if i < 0 else i
    while i < n:
        c = source[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        start, start_line = i, line
        if source.startswith("--", i):
            m = _LONG_OPEN.match(source, i + 2)
            if m:
                end = _long_end(source, m.end(), m.group(1), start_line)
            else:
                end = source.find("\n", i)
                end = n if end < 0 else end
            text = source[start:end]
            if comments:
                tokens.append(Token("comment", text, start, start_line))
            line += text.count("\n")
            i = end
            continue
        m = _LONG_OPEN.match(source, i) if c == "[" else None
        if m:
            end = _long_end(source, m.end(), m.group(1), start_line)
            kind, i = "string", end
        elif c in "\"'":
            i = _quoted_end(source, i, start_line)
            kind = "string"
        elif c.isdigit() or (c == "." and i + 1 < n and source[i + 1].isdigit()):
            m = (_HEX_NUM if source.startswith(("0x", "0X"), i) else _DEC_NUM).match(source, i)
            kind, i = "number", m.end()
        elif c.isalpha() or c == "_":
            kind, i = "name", _NAME.match(source, i).end()
        else:
            op = next((o for o in _OPS if source.startswith(o, i)), c)
            kind, i = "op", i + len(op)
        text = source[start:i]
        tokens.append(Token(kind, text, start, start_line))
        line += text.count("\n")
    return tokens


def _long_end(source: str, pos: int, eqs: str, line: int) -> int:
    close = "]" + eqs + "]"
    end = source.find(close, pos)
    if end < 0:
        raise LuaSourceError("unfinished long string or comment", line)
    return end + len(close)


def _quoted_end(source: str, i: int, line: int) -> int:
    quote, j, n = source[i], i + 1, len(source)
    while j < n:
        ch = source[j]
        if ch == "\\":
            j += 2
            continue
        if ch == quote:
            return j + 1
        if ch == "\n":
            break
        j += 1
    raise LuaSourceError("unfinished string", line)


def is_float_literal(text: str) -> bool:
    """True for numerals that are not integers in Lua's syntax: 1.5, 3., .5, 1e3, 0x1p4."""
    low = text.lower()
    if low.startswith("0x"):
        return "." in low or "p" in low
    return "." in low or "e" in low


def parse(source: str) -> astnodes.Chunk:
    """luaparser's AST; LuaSourceError (with a line where known) on failure."""
    try:
        return lua_ast.parse(source)
    except lua_ast.SyntaxException as exc:
        text = str(exc)
        m = re.search(r"line (\d+)|^(\d+):", text)
        line = int(m.group(1) or m.group(2)) if m else None
        raise LuaSourceError(f"cannot parse the script: {text}", line) from None
    except Exception as exc:  # luaparser's builder fails on some literals (e.g. hex floats)
        raise LuaSourceError(f"cannot parse the script: {exc}") from None


def children(node) -> list:
    """Direct child nodes of a luaparser node, in source order where it matters."""
    out = []
    for key, value in vars(node).items():
        if key.startswith("_") or key == "comments":
            continue
        if isinstance(value, astnodes.Node):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, astnodes.Node))
    return out
