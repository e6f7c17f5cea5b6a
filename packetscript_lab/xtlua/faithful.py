"""Faithful mode: run a script with the kernel's integer arithmetic.

xt_LUA builds Lua 5.1 with `NO_FPU`: numbers are C `long`s, so `/` truncates toward zero,
`%` is C's remainder (its sign follows the dividend), `^` is *multiplication* and a float
literal does not even compile. The userspace runtimes (LuaJIT, 5.1, 5.4) use doubles or
floats, so a faithful run rewrites the script before compiling it:

    a / b  ->  (__ps_idiv(a, b))
    a % b  ->  (__ps_imod(a, b))
    a ^ b  ->  ((a) * (b))

The rewrite splices text at token positions, never regenerates source, and adds no
newline, so every line of the result holds the same code as in the original and error
messages keep pointing at the user's lines. `transform` is the only entry point; the engine
loads FAITHFUL_PRELUDE (which defines the two helpers) into the runtime before the
transformed script.
"""
from __future__ import annotations

import bisect

from luaparser import astnodes

from .luasource import LuaSourceError, children, is_float_literal, parse, tokenize

__all__ = ["transform", "FaithfulError", "FAITHFUL_PRELUDE", "HELPERS"]

HELPERS = ("__ps_idiv", "__ps_imod")


class FaithfulError(LuaSourceError):
    """The script cannot be run with kernel arithmetic (it would not compile there).

    `message` and `line` (1-based, or None) are meant for the engine's ScriptError.
    """


# Lua, loaded once per runtime before the user's script. It must work on LuaJIT, 5.1 and
# 5.4 and needs nothing but the base library (the kernel profile has no `math`). Errors are
# raised at level 2 so that they name the user's line, not the prelude's.
FAITHFUL_PRELUDE = r"""
local type, tonumber, error, load = type, tonumber, error, load

local function operand(v)
  local n = tonumber(v)
  if n == nil then
    error("attempt to perform arithmetic on a " .. type(v) .. " value", 3)
  end
  return n
end

-- trunc(x): x rounded toward zero, as C's integer conversion does
local function trunc(x)
  if x >= 0 then return x - x % 1 end
  return -((-x) - (-x) % 1)
end

local trunc_div = function(a, b)
  -- LuaJIT and 5.1: doubles hold every integer a packet field can have exactly
  return trunc(trunc(a) / trunc(b))
end

if (_VERSION == "Lua 5.3" or _VERSION == "Lua 5.4") and load then
  -- 5.3+ has an integer subtype: keep results integers so they print as "3", not "3.0".
  -- Only 5.3+ can parse `//` and `|`, hence load().
  trunc_div = load([[
    local trunc = ...
    return function(a, b)
      a, b = trunc(a) | 0, trunc(b) | 0
      local q = a // b
      if q < 0 and q * b ~= a then q = q + 1 end
      return q
    end
  ]])(trunc)
end

function __ps_idiv(a, b)
  a, b = operand(a), operand(b)
  if trunc(b) == 0 then
    error("integer division by zero (the kernel would fault)", 2)
  end
  return trunc_div(a, b)
end

function __ps_imod(a, b)
  a, b = operand(a), operand(b)
  if trunc(b) == 0 then
    error("integer modulo by zero (the kernel would fault)", 2)
  end
  -- C's remainder: the sign follows the dividend
  return trunc(a) - trunc_div(a, b) * trunc(b)
end
"""


def transform(source: str) -> str:
    """The script with kernel arithmetic; same lines, same line count.

    Raises FaithfulError for float literals (a syntax error in the kernel's Lua) and for
    scripts luaparser cannot read.
    """
    try:
        tokens = tokenize(source)
    except LuaSourceError as exc:
        raise FaithfulError(exc.message, exc.line) from None
    for tok in tokens:
        if tok.kind == "number" and is_float_literal(tok.text):
            raise FaithfulError(
                f"malformed number near '{tok.text}' (the kernel's Lua has integers only)",
                tok.line,
            )
        if tok.kind == "name" and tok.text in HELPERS:
            raise FaithfulError(f"'{tok.text}' is reserved in faithful mode", tok.line)
    ops = [t for t in tokens if t.kind == "op" and t.text in ("/", "%", "^")]
    if not ops:
        return source
    try:
        tree = parse(source)
    except LuaSourceError as exc:
        raise FaithfulError(exc.message, exc.line) from None

    op_starts = sorted(t.start for t in ops)
    edits: list[tuple[int, int, int, str]] = []   # (position, order, length replaced, text)
    _collect(tree, 0, source, op_starts, edits)

    out, pos = [], 0
    for at, _order, length, text in sorted(edits, key=lambda e: (e[0], e[1])):
        out.append(source[pos:at])
        out.append(text)
        pos = at + length
    out.append(source[pos:])
    result = "".join(out)
    assert result.count("\n") == source.count("\n")
    return result


_REWRITES = {
    # The extra parentheses keep `return a / b` from becoming a tail call, which would drop
    # the user's frame and with it the line number of an error raised in the helper.
    astnodes.FloatDivOp: ("(__ps_idiv(", ",", "))"),
    astnodes.ModOp: ("(__ps_imod(", ",", "))"),
    astnodes.ExpoOp: ("((", ") * (", "))"),
}


def _collect(node, depth: int, source: str, op_starts: list[int], edits: list) -> None:
    rewrite = _REWRITES.get(type(node))
    if rewrite is not None:
        left, right = node.left, node.right
        if None in (left.start_char, left.stop_char, right.start_char, right.stop_char):
            raise FaithfulError("cannot locate the operands of an arithmetic operator", node.line)
        op_at = _operator_between(op_starts, left.stop_char + 1, right.start_char)
        if op_at is None:
            raise FaithfulError("cannot locate an arithmetic operator", node.line)
        open_, sep, close = rewrite
        # At one position, outer openings go first and inner closings go first; closings
        # (order < 0) always precede openings at the same position.
        edits.append((left.start_char, 1_000_000 + depth, 0, open_))
        edits.append((op_at, 0, 1, sep))
        edits.append((right.stop_char + 1, -1_000_000 + (1_000 - depth), 0, close))
        depth += 1
    for child in children(node):
        _collect(child, depth, source, op_starts, edits)


def _operator_between(op_starts: list[int], lo: int, hi: int) -> int | None:
    # Tokens exclude comments and strings, so a '/' inside them is never picked.
    i = bisect.bisect_left(op_starts, lo)
    if i < len(op_starts) and op_starts[i] < hi:
        return op_starts[i]
    return None
