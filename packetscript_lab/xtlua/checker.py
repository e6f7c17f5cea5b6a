"""Portability check: which lines of a script would not work (or work differently) in xt_LUA.

`check_source(source, profile="kernel")` returns a Report of findings, each with a line,
a rule id (see rules.py), a one-line reason and a fix. It reads the script statically
(luaparser AST plus exact tokens); it does not run it, so the engine's compile step stays
the authority on syntax errors.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field

from luaparser import astnodes as N

from packetscript_lab.core.protocols import PROTOCOLS

from .luasource import LuaSourceError, is_float_literal, parse, tokenize
from .rules import MAX_FUNCTION_NAME, MAX_SCRIPT_SIZE, MAX_STATE_ID, RULES

__all__ = ["Finding", "Report", "check_source", "PROFILES"]

PROFILES = ("lab", "kernel")

# Globals that do not exist, per profile (reference §1.3; DESIGN.md profiles).
_ABSENT_LAB = {"io", "os", "require", "debug", "package", "dofile", "loadfile", "module"}
_ABSENT_KERNEL = _ABSENT_LAB | {"string", "table", "math", "utf8", "bit", "bit32", "jit", "ffi"}
_STRING_METHODS = {"byte", "char", "find", "format", "gmatch", "gsub", "len", "lower",
                   "match", "rep", "reverse", "sub", "upper"}

# Field methods per protocol buffer of xt_LUA (reference §2.6), from the protocol table;
# the lab's own protocols (IPv6) are flagged wherever they are named.
FIELDS = {p.short: {f.name for f in p.fields} for p in PROTOCOLS if p.xt_lua}
_LAB_ONLY = {p.name for p in PROTOCOLS if not p.xt_lua}
_ALL_FIELDS = set().union(*FIELDS.values())
_SEG_METHODS = {"raw", "get_offset", "get_size", "to_bytes", "get", "set"}
_CHECK_FIELD = {"ip": "check", "tcp": "check", "udp": "check", "icmp": "checksum"}
_LOOPS = (N.While, N.Repeat, N.Fornum, N.Forin)
_LUA51_OPS = {N.FloorDivOp: "//", N.BAndOp: "&", N.BOrOp: "|", N.BXorOp: "~",
              N.BShiftLOp: "<<", N.BShiftROp: ">>", N.UBNotOp: "~"}


@dataclass
class Finding:
    line: int | None
    rule: str
    message: str
    fix: str
    severity: str = ""

    def __post_init__(self):
        if not self.severity:
            self.severity = RULES[self.rule].severity

    def as_dict(self) -> dict:
        return {"line": self.line, "rule": self.rule, "severity": self.severity,
                "message": self.message, "fix": self.fix}


@dataclass
class Report:
    file: str
    profile: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def portable(self) -> bool:
        """No errors: the script loads and runs in the profile (warnings may remain)."""
        return not self.errors

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def exit_status(self) -> int:
        """0 clean, 3 at least one error, 4 warnings only (1 and 2 are taken by the CLI)."""
        return 3 if self.errors else 4 if self.findings else 0

    def as_dict(self) -> dict:
        return {"file": self.file, "profile": self.profile, "portable": self.portable,
                "clean": self.clean, "errors": len(self.errors),
                "warnings": len(self.warnings),
                "findings": [f.as_dict() for f in self.findings]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def __str__(self) -> str:
        if self.clean:
            return f"{self.file}: no findings for the {self.profile} profile"
        lines = []
        for f in self.findings:
            where = f"{self.file}:{f.line}" if f.line else self.file
            lines.append(f"{where}: {f.severity} [{f.rule}] {f.message}")
            lines.append(f"    fix: {f.fix}")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) "
                     f"for the {self.profile} profile")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if self.clean:
            return f"<p>{html.escape(str(self))}</p>"
        rows = "".join(
            f"<tr><td>{f.line or ''}</td><td>{f.severity}</td><td><code>{f.rule}</code></td>"
            f"<td>{html.escape(f.message)}</td><td>{html.escape(f.fix)}</td></tr>"
            for f in self.findings)
        return ("<table><tr><th>line</th><th>severity</th><th>rule</th><th>problem</th>"
                f"<th>fix</th></tr>{rows}</table>")


def check_source(source: str, profile: str = "kernel", *, name: str = "script",
                 function: str = "process_packet", state_id: int | None = None) -> Report:
    """Findings for `source` in `profile` ("lab" or "kernel"), sorted by line."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    report = Report(name, profile)
    out = report.findings
    kernel = profile == "kernel"
    if kernel:
        out.extend(_limits(source, function, state_id))
    try:
        tokens = tokenize(source)
    except LuaSourceError as exc:
        out.append(Finding(exc.line, "syntax", exc.message, "fix the syntax error first"))
        return _sorted(report)
    if kernel:
        out.extend(_token_rules(tokens))
    try:
        tree = parse(_without_floats(source, tokens))
    except LuaSourceError as exc:
        out.append(Finding(exc.line, "syntax", exc.message,
                           "fix the syntax error first (the engine's compiler names it exactly)"))
        return _sorted(report)
    walker = _Walker(kernel)
    walker.visit(tree)
    out.extend(walker.findings)
    out.extend(_entry_rule(walker, function))
    if kernel:
        out.extend(_field_kept(walker))
        out.extend(_stale_checksums(walker))
    return _sorted(report)


def _sorted(report: Report) -> Report:
    report.findings.sort(key=lambda f: (f.line or 0, f.rule))
    return report


# --- rules on the whole text, the options and the tokens -----------------------------

def _limits(source: str, function: str, state_id: int | None) -> list[Finding]:
    out = []
    size = len(source.encode("utf-8", errors="surrogateescape"))
    if size > MAX_SCRIPT_SIZE:
        out.append(Finding(None, "script-size",
                           f"the script is {size} bytes; iptables accepts at most {MAX_SCRIPT_SIZE}",
                           "split it across rules with their own --state, or shorten it"))
    if "\0" in source:
        line = source[:source.index("\0")].count("\n") + 1
        out.append(Finding(line, "nul-byte",
                           "a NUL byte: iptables copies the script only up to here",
                           "remove the NUL byte (write \"\\0\" inside strings)"))
    if len(function.encode()) > MAX_FUNCTION_NAME:
        out.append(Finding(None, "function-name",
                           f"the --function name is {len(function.encode())} bytes; "
                           f"the rule holds at most {MAX_FUNCTION_NAME}",
                           "use a shorter function name"))
    elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", function):
        out.append(Finding(None, "function-name",
                           f"--function {function!r} is not a Lua global name",
                           "name a global function defined by the script"))
    if state_id is not None and not 0 <= state_id <= MAX_STATE_ID:
        out.append(Finding(None, "state-id",
                           f"--state {state_id}: iptables accepts only 0..{MAX_STATE_ID}",
                           f"pick a state id from 0 to {MAX_STATE_ID}"))
    return out


def _token_rules(tokens) -> list[Finding]:
    out = []
    for tok in tokens:
        if tok.kind == "number" and is_float_literal(tok.text):
            out.append(Finding(tok.line, "float-literal",
                               f"float literal {tok.text}: kernel numbers are integers and "
                               "this does not compile there",
                               "use an integer (scale the value, e.g. milliseconds not seconds)"))
        elif tok.kind == "op" and tok.text == "^":
            out.append(Finding(tok.line, "power",
                               "`^` multiplies in the kernel (2^8 is 16, not 256)",
                               "write the constant (256) or multiply in a loop"))
        elif tok.kind == "op" and tok.text == "/":
            out.append(Finding(tok.line, "division",
                               "`/` is integer division in the kernel, truncating toward zero "
                               "(7/2 is 3, -7/2 is -3)",
                               "make sure the truncated result is what you want; test with "
                               "Script(..., profile='kernel', faithful=True)"))
    return out


def _without_floats(source: str, tokens) -> str:
    # luaparser cannot read some float literals (hex floats); they are already reported,
    # so parse a copy where each is an integer of the same width (positions unchanged).
    parts, pos = [], 0
    for tok in tokens:
        if tok.kind == "number" and is_float_literal(tok.text):
            parts += [source[pos:tok.start], "0".ljust(len(tok.text))]
            pos = tok.start + len(tok.text)
    return "".join(parts) + source[pos:] if parts else source


# --- the AST walk ---------------------------------------------------------------------

@dataclass
class _Access:
    """`recv:FIELD(args)`: one field access, with the protocol guessed for `recv`."""
    node: N.Invoke
    field: str
    proto: str | None
    func: int
    line: int


@dataclass
class _Binding:
    name: str
    local: bool
    func: int
    end: int          # character index after the bound expression
    line: int
    access: _Access | None     # set when the value is a field object


@dataclass
class _Use:
    """`name:get(...)` or `name:set(...)`."""
    name: str
    func: int
    start: int
    line: int
    loops: tuple       # (start, stop) of the enclosing loops
    node: N.Invoke


class _Walker:
    def __init__(self, kernel: bool):
        self.kernel = kernel
        self.absent = _ABSENT_KERNEL if kernel else _ABSENT_LAB
        self.findings: list[Finding] = []
        self.scopes: list[dict[str, str | None]] = [{}]   # local name -> protocol guess
        self.globals: dict[str, str | None] = {}
        self.func_stack = [0]
        self.next_func = 1
        self.loops: list[tuple[int, int]] = []
        self.line = 1
        self.global_functions: dict[str, int] = {}
        self.local_functions: dict[str, int] = {}
        self.accesses: list[_Access] = []
        self.bindings: list[_Binding] = []
        self.uses: list[_Use] = []
        self.setters: list[tuple[_Access, N.Invoke]] = []   # (field access, its :set call)
        self.dynamic_calls: list[int] = []
        self.dynamic_fields: set[str] = set()
        self.loop_spans: list[tuple[int, int, int]] = []     # (start, stop, func)

    # helpers
    def add(self, rule, message, fix, line=None):
        self.findings.append(Finding(line or self.line, rule, message, fix))

    def is_local(self, name: str) -> bool:
        return any(name in s for s in self.scopes)

    def proto_of_name(self, name: str):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return self.globals.get(name)

    def declare(self, name: str, proto=None):
        self.scopes[-1][name] = proto

    @property
    def func(self) -> int:
        return self.func_stack[-1]

    # dispatch
    def visit(self, node):
        if node is None or not isinstance(node, N.Node):
            return
        if node.line:
            self.line = node.line
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is not None:
            method(node)
        elif isinstance(node, N.BinaryOp):
            self.visit_binary(node)
        elif isinstance(node, N.UnaryOp):
            if self.kernel and type(node) in _LUA51_OPS:
                self._lua51(f"the unary `{_LUA51_OPS[type(node)]}` operator")
            self.visit(node.operand)

    def visit_list(self, nodes):
        for n in nodes or []:
            self.visit(n)

    def visit_Chunk(self, node):
        self.visit(node.body)

    def visit_Block(self, node):
        self.scopes.append({})
        self.visit_list(node.body)
        self.scopes.pop()

    def visit_Do(self, node):
        self.visit(node.body)

    def visit_binary(self, node):
        if self.kernel and type(node) in _LUA51_OPS:
            self._lua51(f"the `{_LUA51_OPS[type(node)]}` operator")
        self.visit(node.left)
        self.visit(node.right)

    def _lua51(self, what):
        self.add("lua51-syntax", f"{what} needs Lua 5.3+; the kernel runs Lua 5.1",
                 "rewrite it with Lua 5.1 syntax")

    def visit_Goto(self, node):
        if self.kernel:
            self._lua51("`goto`")

    def visit_Label(self, node):
        if self.kernel:
            self._lua51("a `::label::`")

    def visit_Name(self, node, member=None):
        if self.kernel and node.id in _LAB_ONLY and not self.is_local(node.id):
            self.add("not-in-xt-lua", f"`{node.id}` is the lab's own (IPv6 is beyond xt_LUA): "
                     "the kernel module has no such protocol buffer",
                     "keep IPv6 scripts to the lab (replay), or handle only IPv4 packets")
        if node.id in self.absent and not self.is_local(node.id):
            what = "strings have no methods and there is no string library" \
                if node.id == "string" else f"`{node.id}` does not exist"
            where = "in the kernel" if self.kernel else "in the lab profile"
            used = f"{node.id}.{member}" if member else node.id
            self.add("library", f"`{used}` is used: {what} {where}",
                     _library_fix(node.id, self.kernel))

    def visit_Index(self, node):
        if isinstance(node.value, N.Name) and node.notation == N.IndexNotation.DOT \
                and isinstance(node.idx, N.Name):
            self.visit_Name(node.value, member=node.idx.id)   # names `string.format`
            return
        self.visit(node.value)
        if node.notation == N.IndexNotation.SQUARE:
            self.visit(node.idx)

    def visit_Table(self, node):
        for f in node.fields:
            if f.key is not None and f.between_brackets:
                self.visit(f.key)
            self.visit(f.value)

    def visit_Field(self, node):   # only reached through odd trees; tables handle fields
        self.visit(node.value)

    def visit_LocalAssign(self, node):
        self.visit_list(node.values)
        for i, target in enumerate(node.targets):
            if self.kernel and getattr(target, "attribute", None) is not None:
                self._lua51("a `<const>`/`<close>` attribute")
            value = node.values[i] if i < len(node.values) else None
            self._bind(target.id, True, value)

    def visit_Assign(self, node):
        self.visit_list(node.values)
        for i, target in enumerate(node.targets):
            value = node.values[i] if i < len(node.values) else None
            if isinstance(target, N.Name):
                self._bind(target.id, self.is_local(target.id), value)
            else:
                self.visit(target)

    def _bind(self, name, local, value):
        proto = self._proto(value) if value is not None else None
        access = self._field_access(value) if value is not None else None
        end = (value.stop_char + 1) if value is not None and value.stop_char is not None else 0
        self.bindings.append(_Binding(name, local, self.func, end, self.line, access))
        if local:
            self.declare(name, proto)
        else:
            for scope in reversed(self.scopes):
                if name in scope:
                    scope[name] = proto
                    break
            else:
                self.globals[name] = proto

    def _function(self, node, params, name=None):
        self.func_stack.append(self.next_func)
        self.next_func += 1
        self.scopes.append({})
        for p in params:
            if isinstance(p, N.Name):
                self.declare(p.id)
        self.visit(node.body)
        self.scopes.pop()
        self.func_stack.pop()

    def visit_Function(self, node):
        name = None
        if isinstance(node.name, N.Name):
            name = node.name.id
            if self.is_local(name):
                self.local_functions.setdefault(name, self.line)
            else:
                self.global_functions.setdefault(name, self.line)
        else:
            self.visit(node.name)
        self._function(node, node.args, name)

    def visit_LocalFunction(self, node):
        self.declare(node.name.id)
        self.local_functions.setdefault(node.name.id, self.line)
        self._function(node, node.args)

    def visit_Method(self, node):
        self.visit(node.source)
        self._function(node, [N.Name("self")] + list(node.args))

    def visit_AnonymousFunction(self, node):
        self._function(node, node.args)

    def _loop(self, node, body_visit):
        span = (node.start_char or 0, node.stop_char or 0)
        self.loop_spans.append((*span, self.func))
        self.loops.append(span)
        body_visit()
        self.loops.pop()

    def visit_While(self, node):
        self._loop(node, lambda: (self.visit(node.test), self.visit(node.body)))

    def visit_Repeat(self, node):
        self._loop(node, lambda: (self.visit(node.body), self.visit(node.test)))

    def visit_Fornum(self, node):
        self.visit(node.start)
        self.visit(node.stop)
        self.visit(node.step)

        def body():
            self.scopes.append({node.target.id: None})
            self.visit(node.body)
            self.scopes.pop()
        self._loop(node, body)

    def visit_Forin(self, node):
        self.visit_list(node.iter)

        def body():
            self.scopes.append({t.id: None for t in node.targets})
            self.visit(node.body)
            self.scopes.pop()
        self._loop(node, body)

    def visit_If(self, node):
        self.visit(node.test)
        self.visit(node.body)
        self.visit(node.orelse)

    visit_ElseIf = visit_If

    def visit_Return(self, node):
        self.visit_list(node.values)

    def visit_Call(self, node):
        self.visit(node.func)
        self.visit_list(node.args)
        if isinstance(node.func, N.Name) and node.func.id == "register_dynamic_protbuf":
            self._dynamic(node)

    def visit_Invoke(self, node):
        self.visit(node.source)
        self.visit_list(node.args)
        method = node.func.id if isinstance(node.func, N.Name) else None
        if method is None:
            return
        line = node.line or self.line
        if self.kernel and method in _STRING_METHODS and method not in self.dynamic_fields \
                and method not in _ALL_FIELDS:
            self.add("string-method",
                     f"`:{method}()` is a string method; kernel strings have no methods",
                     "compare bytes one by one (seg:to_bytes()[i]) or use ==, .., #", line)
        access = self._field_access(node)
        if access is not None:
            self.accesses.append(access)
        if method in ("get", "set"):
            target = self._field_access(node.source)
            if isinstance(node.source, N.Name):
                self.uses.append(_Use(node.source.id, self.func, node.start_char or 0, line,
                                      tuple(self.loops), node))
                bound = self._latest_binding(node.source.id, node.start_char or 0)
                target = bound.access if bound is not None else None
            if method == "set" and target is not None:
                self.setters.append((target, node))
                if target.field in ("saddr", "daddr") and len(node.args) >= 2:
                    self.add("skb-address",
                             f"`skb` passed to the {target.field} setter: on 64-bit kernels "
                             "this writes through a wild pointer (crash); on 32-bit it also "
                             "corrupts 2 payload bytes for daddr",
                             f"drop the skb argument ({target.field}():set(addr)) and fix the "
                             "TCP/UDP checksum yourself", line)

    # protocol guesses
    def _proto(self, expr):
        if isinstance(expr, N.AndLoOp):        # `ip and ip:data(packet_udp)`
            return self._proto(expr.right)
        if isinstance(expr, N.OrLoOp):
            return self._proto(expr.left) or self._proto(expr.right)
        if isinstance(expr, N.Name):
            return self.proto_of_name(expr.id)
        if isinstance(expr, N.Invoke) and isinstance(expr.func, N.Name):
            method = expr.func.id
            if method == "data" and expr.args and isinstance(expr.args[0], N.Name) \
                    and expr.args[0].id.startswith("packet_"):
                return expr.args[0].id[len("packet_"):]
            if method == "raw":
                return self._proto(expr.source)
        return None

    def _field_access(self, expr) -> _Access | None:
        """The access when `expr` is `recv:FIELD(...)` returning a field object."""
        if not (isinstance(expr, N.Invoke) and isinstance(expr.func, N.Name)):
            return None
        method = expr.func.id
        if method in _SEG_METHODS:
            return None
        if method == "data" and expr.args:
            return None             # a payload conversion returns a segment, not a field
        proto = self._proto(expr.source)
        known = FIELDS.get(proto, set()) if proto else _ALL_FIELDS
        if method not in known and method not in self.dynamic_fields:
            return None
        if proto is None:
            owners = [p for p, fs in FIELDS.items() if method in fs]
            proto = owners[0] if len(owners) == 1 else None
        return _Access(expr, method, proto, self.func, expr.line or self.line)

    def _latest_binding(self, name, before) -> _Binding | None:
        local = self.is_local(name)
        candidates = [b for b in self.bindings if b.name == name and b.end <= before
                      and (b.func == self.func or not b.local or not local)]
        same = [b for b in candidates if b.func == self.func]
        if same:
            return same[-1]
        return candidates[-1] if candidates else None

    def _dynamic(self, node):
        self.line = node.line or self.line
        self.dynamic_calls.append(self.line)
        if len(self.dynamic_calls) == 2:
            self.add("dynamic-protocols",
                     "a second dynamic protocol: xt_LUA has one dynamic slot per module, "
                     "so this registration fails and the rule is rejected",
                     "define one dynamic protocol only (share it between rules)")
        table = node.args[0] if node.args and isinstance(node.args[0], N.Table) else None
        if table is None:
            return
        keys = {f.key.id if isinstance(f.key, N.Name) else getattr(f.key, "s", None): f.value
                for f in table.fields if f.key is not None}
        fields = keys.get("protocol_fields")
        if isinstance(fields, N.Table):
            for entry in fields.fields:
                desc = entry.value
                if not isinstance(desc, N.Table):
                    continue
                values = [f.value for f in desc.fields if f.key is None]
                if values and isinstance(values[0], N.String):
                    self.dynamic_fields.add(_lua_string(values[0]))
                if len(values) >= 5 and not isinstance(values[4], N.Nil):
                    self.add("dynamic-protocol-bug",
                             "a setter callback on a dynamic protocol field: the byte array "
                             "it gets has an uninitialised offset, so writing crashes",
                             "leave the setter nil and write through a raw segment "
                             "(p:raw(off, len):set(v)) instead", desc.line or self.line)
        if "payload_field" in keys and "has_protocol" not in keys:
            self.add("dynamic-protocol-bug",
                     "payload_field without has_protocol: converting the payload makes the "
                     "kernel call a NULL function name (crash)",
                     "add has_protocol = \"NAME_OF_A_GLOBAL_FUNCTION\"", table.line or self.line)


def _lua_string(node) -> str:
    s = getattr(node, "s", "")
    return s.decode(errors="replace") if isinstance(s, bytes) else str(s)


def _library_fix(name: str, kernel: bool) -> str:
    if not kernel:
        return "the lab sandbox has no files, processes or modules; keep state in globals"
    return {
        "string": "compare bytes through seg:to_bytes()[i]; build text with .. and tostring",
        "table": "index tables directly (t[#t + 1] = v) instead of table.insert/remove",
        "math": "use integer arithmetic: a - a % b for floor, comparisons for min/max, "
                "nf.get_random() for random numbers",
    }.get(name, "remove it: the kernel has only the base library, coroutine and nf")


# --- rules over the collected accesses --------------------------------------------------

def _entry_rule(walker: _Walker, function: str) -> list[Finding]:
    if function in walker.global_functions or function in walker.globals:
        return []
    if function in walker.local_functions:
        return [Finding(walker.local_functions[function], "entry-missing",
                        f"`{function}` is local; the rule calls a global function, so every "
                        "packet would be dropped", f"declare it as `function {function}(p)`")]
    return [Finding(None, "entry-missing",
                    f"no global function `{function}`: every packet would be dropped",
                    f"define `function {function}(p) ... return NF_ACCEPT end` or pass "
                    "the right --function")]


def _field_kept(walker: _Walker) -> list[Finding]:
    out = []
    access_at = sorted((a.node.start_char or 0, a.func) for a in walker.accesses)
    for use in walker.uses:
        bound = _binding_for(walker, use)
        if bound is None or bound.access is None:
            continue
        field_ = bound.access.field
        if bound.func != use.func or not bound.local:
            why = "from a global, kept across packets (it points into an earlier packet)"
        elif any(bound.end <= pos < use.start and f == use.func for pos, f in access_at):
            why = "after other fields were accessed"
        elif any(start > bound.end and any(start <= pos <= stop and f == use.func
                                          for pos, f in access_at)
                 for start, stop in use.loops):
            why = "inside a loop that accesses other fields"
        else:
            continue
        out.append(Finding(use.line, "field-kept",
                           f"`{use.name}` holds the {field_} field from line {bound.line} and "
                           f"is used {why}: in the kernel its :get()/:set() run the accessor of "
                           "the last field touched",
                           f"write the access in one expression: "
                           f"{bound.access.proto or 'seg'}:{field_}():{use.node.func.id}(...)"))
    return out


def _binding_for(walker: _Walker, use: _Use) -> _Binding | None:
    same = [b for b in walker.bindings
            if b.name == use.name and b.func == use.func and b.end <= use.start]
    if same:
        return same[-1]
    outer = [b for b in walker.bindings if b.name == use.name and b.func != use.func]
    return outer[-1] if outer else None


_CHECKSUM_TEXT = {"ip": "IP header", "tcp": "TCP", "udp": "UDP", "icmp": "ICMP"}
_IP_FIX = {
    "ttl": "use iptables' own -j TTL target, or set ip:check() yourself",
    "tos": "use -j TOS / -j DSCP, or set ip:check() yourself",
}


def _stale_checksums(walker: _Walker) -> list[Finding]:
    fixed = set()        # protocols whose checksum the script writes itself
    for access, _ in walker.setters:
        if access.field == _CHECK_FIELD.get(access.proto) or \
                (access.proto is None and access.field in ("check", "checksum")):
            fixed.update([access.proto] if access.proto else _CHECK_FIELD)
    out = []
    for access, node in walker.setters:
        proto, f = access.proto, access.field
        line = node.line or access.line
        if f == _CHECK_FIELD.get(proto) or f in ("check", "checksum") and proto is None:
            continue
        if proto == "ip" and f in ("saddr", "daddr"):
            if len(node.args) >= 2 or {"tcp", "udp"} <= fixed:
                continue
            out.append(Finding(line, "stale-checksum",
                               f"changing {f} fixes only the IP header checksum; a TCP or UDP "
                               "checksum over the pseudo-header stays stale",
                               "TCP: zero tcp:check() bytes then tcp:check():set(); "
                               "UDP: udp:check():set(0) (no checksum)"))
            continue
        if proto == "ip" and f == "data":
            proto = None
            what = "the TCP/UDP/ICMP checksum over the payload stays stale"
        elif proto in ("eth", "raw", "tftp", "tcp_opt"):
            continue      # no checksum of its own (tftp/tcp_opt sit inside UDP/TCP: see below)
        elif proto is None:
            what = "the checksum of its protocol stays stale"
        else:
            if proto in fixed:
                continue
            what = f"the {_CHECKSUM_TEXT[proto]} checksum stays stale"
        if proto is None and fixed:
            continue
        fix = _IP_FIX.get(f) if proto == "ip" else None
        fix = fix or {
            "ip": "set ip:check():set(x) yourself (no helper computes x)",
            "tcp": "zero the check bytes (p:raw(tcp:check():get_offset(), 2):set(0)) then "
                   "call tcp:check():set()",
            "udp": "udp:check():set(0) (IPv4 allows no UDP checksum) or compute it yourself",
            "icmp": "write the ICMP checksum yourself",
        }.get(proto, "recompute the checksum of the protocol you changed")
        out.append(Finding(line, "stale-checksum",
                           f"setting {(proto + '.') if proto else ''}{f}: {what} in the kernel",
                           fix))
    return out
