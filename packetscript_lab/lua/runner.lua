-- Runs a user script over packets: the sandbox, the per-packet call with its instruction
-- budget and error capture, verdict mapping, checksum fix-up, and the two drivers the
-- Python side calls (one packet as a string, or a batch over a shared FFI buffer).

local load_packet_api, instrumenter, cfg = ...
local A = {}
load_packet_api(A, cfg.protocols)

local type, tostring, tonumber, pairs, select, pcall, xpcall, error, setmetatable, rawget =
      type, tostring, tonumber, pairs, select, pcall, xpcall, error, setmetatable, rawget
local floor, sbyte, schar, sfind, ssub, sgsub, concat =
      math.floor, string.byte, string.char, string.find, string.sub, string.gsub, table.concat
local getinfo = debug.getinfo
local ffi = cfg.ffi and require("ffi") or nil
local unpack = unpack or table.unpack

local E = {}
local CHUNK = cfg.chunkname                   -- the user's chunk name, e.g. "cell"
local SOURCE = "=" .. CHUNK
local FN = cfg["function"]
local BUDGET = cfg.budget                      -- steps per packet; 0 = unlimited
local ON_ERROR = cfg.on_error_code
-- The result code's flags (core/results.py), added to the verdict code 0, 1 or 2.
local R = cfg.results
local CHANGED, FAILED, ETH_CHANGED, BODY_CHANGED, PRINTED =
      R.changed, R.failed, R.eth_changed, R.body_changed, R.printed
local DROP, ACCEPT, CONTINUE = R.drop, R.accept, R["continue"]
local FIX = cfg.fix_checksums

-- ---------------------------------------------------------------- budget
-- The budget counts steps: loop iterations, function calls and jumps. instrument.lua writes
-- a call to `tick` into the script's source at each of those places (same lines), so the
-- script stays JIT-compiled; a debug hook would switch LuaJIT to its slow interpreter for
-- every packet. Straight-line code between two checks is bounded by the source's length.
-- The state lives here, out of the script's reach: once the budget is spent every further
-- step fails again, and `exhausted` decides the packet's fate whatever the script catches.
local steps, limit, exhausted, exhausted_line, budget_text = 0, 0, false, nil, nil
local ret_line                                 -- line of the last `return` (or fall-off `end`)

local function user_line()
  for level = 3, 60 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == SOURCE and info.currentline and info.currentline > 0 then
      return info.currentline
    end
  end
end

local function tick()
  steps = steps + 1
  if steps > limit then
    if not exhausted then
      exhausted, exhausted_line = true, user_line()
      budget_text = "budget of " .. limit .. " steps (loop iterations and calls) exceeded: endless loop?"
    end
    error(budget_text, 0)
  end
end
local function ret(line) ret_line = line end
local function arm(n)
  steps, exhausted, exhausted_line = 0, false, nil
  limit = n > 0 and n or math.huge
end

-- After a protected call made by the script (pcall, xpcall, coroutine.resume): a spent
-- budget goes on up, it cannot be caught.
local function uncaught(...)
  if exhausted then error(budget_text, 0) end
  return ...
end

-- ---------------------------------------------------------------- errors and output
-- An error becomes {message, line}; line is the innermost frame of the user's chunk,
-- so API errors point at the script line that made the call. Whatever a script raises
-- (tables with metatables, huge strings) becomes a plain, bounded message here; the
-- runner's own errors (a bad verdict) pass through `pending`, which no script can set.
local function escape(s) return (sgsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end
local PREFIX = "^" .. escape(CHUNK) .. ":(%d+): "
local MAX_MESSAGE = 500
local pending

local function handler(msg)
  if pending then local e = pending; pending = nil; return e end
  if exhausted then return { budget_text, exhausted_line } end
  local line, t = user_line(), type(msg)
  if t == "number" then
    msg = tostring(msg)
  elseif t ~= "string" then
    msg = "error object is not a string (a " .. t .. ")"
  end
  local _, _, l = sfind(msg, PREFIX)
  if l then
    msg = ssub(msg, #CHUNK + #l + 4)
    line = line or tonumber(l)
  end
  if #msg > MAX_MESSAGE then msg = ssub(msg, 1, MAX_MESSAGE) .. "... (" .. #msg .. " bytes)" end
  return { msg, line }
end

-- A failed protected call's value as {message, line}: out-of-memory errors skip the
-- handler and arrive as strings.
local function as_error(v)
  if exhausted then return { budget_text, exhausted_line } end
  if type(v) == "table" and type(v[1]) == "string" then return v end
  return { type(v) == "string" and v or "error", nil }
end

-- print: lines are cut to MAX_LINE bytes and at most MAX_OUT bytes wait for the host to
-- take them; the rest is counted, not kept.
local OUT, OUT_BYTES, OUT_LOST = {}, 0, 0
local MAX_LINE, MAX_OUT = 1000, 64 * 1024
local function user_print(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  local line = concat(parts, "\t")
  if #line > MAX_LINE then line = ssub(line, 1, MAX_LINE) .. "... (" .. #line .. " bytes)" end
  if OUT_BYTES + #line > MAX_OUT then OUT_LOST = OUT_LOST + 1; return end
  OUT[#OUT + 1] = line
  OUT_BYTES = OUT_BYTES + #line + 1
end
-- The waiting lines as one string ("\n" between lines), how many, and how many were dropped.
function E.take_output()
  local text, count, lost = concat(OUT, "\n"), #OUT, OUT_LOST
  OUT, OUT_BYTES, OUT_LOST = {}, 0, 0
  return text, count, lost
end

-- ---------------------------------------------------------------- sandbox
local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do if not (except and except[k]) then c[k] = v end end
  return c
end

local env = {}
for _, k in pairs { "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
                    "rawset", "rawlen", "select", "setmetatable", "getmetatable", "tonumber",
                    "tostring", "type", "_VERSION" } do
  env[k] = _G[k]
end
env.unpack = unpack
env.print = user_print
env.pcall = function(...) return uncaught(pcall(...)) end
env.xpcall = function(...) return uncaught(xpcall(...)) end

-- Loading: the text is first compiled as written (its syntax errors are the script's own),
-- then with the budget written in, and bound to the script's globals.
local GOTO = cfg.lua ~= "5.1"                  -- LuaJIT and 5.4 know `goto`
local function compile_text(src, name)
  local fn, err
  if setfenv then fn, err = loadstring(src, name) else fn, err = load(src, name, "t", env) end
  if not fn then return nil, err end
  if setfenv then setfenv(fn, env) end
  return fn
end
local function load_text(src, name)
  if type(src) ~= "string" then return nil, "only source text can be loaded" end
  if sbyte(src, 1) == 27 then return nil, "loading precompiled bytecode is not allowed" end
  local ok, err = compile_text(src, name)
  if not ok then return nil, err end
  local text, lex_err = instrumenter.instrument(src, GOTO)
  if not text then return nil, lex_err end
  local outer, cerr = compile_text(text, name)
  if not outer then return nil, cerr end
  return outer(tick, ret)
end
env.loadstring = function(src, name) return load_text(src, name or "=(loadstring)") end
env.load = function(src, name) return load_text(src, name or "=(load)") end

local co = copy(coroutine)
local resume = coroutine.resume
co.resume = function(...) return uncaught(resume(...)) end
env.coroutine = co

if cfg.profile == "lab" then
  env.string = copy(string, { dump = true })
  env.table = copy(table)
  env.math = copy(math)
  getmetatable("").__index = env.string
else
  -- xt_LUA opens only the base library (and coroutine): no string, table, math, io, os;
  -- strings have no methods. newproxy is left out: a finalizer would run script code at
  -- moments no budget or protected call covers.
  env.collectgarbage = collectgarbage
  getmetatable("").__index = nil
end
-- gcinfo (KiB in use) is in 5.1's base library; LuaJIT and 5.4 dropped it.
env.gcinfo = rawget(_G, "gcinfo") or function() return floor(collectgarbage("count")) end

-- getfenv and setfenv (5.1 and LuaJIT; 5.4 has no function environments), limited to the
-- script's own functions: the engine's functions (the budget's, the API's, the wrappers
-- of pcall and print) keep their environment, and theirs is never shown to the script.
local ENGINE_SOURCES = { ["=packet.lua"] = true, ["=runner.lua"] = true, ["=instrument.lua"] = true,
                         ["=prelude"] = true }
if setfenv then
  local real_getfenv, real_setfenv = getfenv, setfenv
  -- The function meant by f (a function, or a level counted from the caller of the
  -- wrapper), and whether it is the script's own.
  local function target(f, what)
    if f == nil then f = 1 end
    if type(f) == "number" then
      if f < 0 or f % 1 ~= 0 then error("bad argument #1 to '" .. what .. "' (level must be non-negative)", 0) end
      if f == 0 then return nil, false end
      local info = getinfo(f + 2, "fS")
      if not info then error("bad argument #1 to '" .. what .. "' (invalid level)", 0) end
      if not info.func then error("no function environment for tail call at level " .. f, 0) end
      f = info.func
    elseif type(f) ~= "function" then
      error("bad argument #1 to '" .. what .. "' (number expected, got " .. type(f) .. ")", 0)
    end
    local info = getinfo(f, "S")
    return f, info.what ~= "C" and not ENGINE_SOURCES[info.source]
  end
  env.getfenv = function(f)
    local fn, own = target(f, "getfenv")
    if own then return real_getfenv(fn) end
    return env                               -- what the script sees as the global table
  end
  env.setfenv = function(f, t)
    if type(t) ~= "table" then
      error("bad argument #2 to 'setfenv' (table expected, got " .. type(t) .. ")", 0)
    end
    local fn, own = target(f, "setfenv")
    if not own then
      error("'setfenv' cannot change the environment of this function: only the script's own functions", 0)
    end
    return real_setfenv(fn, t)
  end
end

-- The PacketScript globals.
for k, v in pairs(A.globals) do env[k] = v end
env.NF_DROP, env.NF_ACCEPT, env.XT_CONTINUE = 0, 1, 4294967295
env.STATE_ID = cfg.state_id
env.supported_protocols = A.supported
env.register_dynamic_protbuf = A.register_dynamic_protbuf
local now_ms = 0
local random = math.random
if cfg.seed then math.randomseed(cfg.seed) end
env.nf = {
  get_time = function() return now_ms end,
  get_random = function() return floor(random() * 4294967296) end,
}
env._G = env
A.set_env(env)

local SKB = rawget(_G, "newproxy") and newproxy() or setmetatable({}, { __metatable = "skb" })
A.configure { kernel_address_checksum = not FIX, skb = SKB, guard = uncaught }

-- ---------------------------------------------------------------- compiling
-- Returns true, or false with the message and line of the first error.
function E.compile(src, prelude)
  if prelude then
    local pf, perr = load_text(prelude, "=prelude")
    if not pf then return false, perr, 0 end
    pf()
  end
  local fn, err = load_text(src, SOURCE)
  if not fn then
    err = tostring(err)
    local _, _, l = sfind(err, PREFIX)
    if l then return false, ssub(err, #CHUNK + #l + 4), tonumber(l) end
    return false, err, 0
  end
  arm(BUDGET > 0 and BUDGET * 10 or 0)           -- the top level may do some set-up work
  local ok, e = xpcall(fn, handler)
  if not ok then e = as_error(e); return false, e[1], e[2] or 0 end
  if type(rawget(env, FN)) ~= "function" then
    return false, "the script defines no function '" .. FN .. "'", 0
  end
  return true
end

-- ---------------------------------------------------------------- one packet
-- The packet goes to the script as an argument, never through a variable of the engine:
-- kept in one, it would outlive the call and LuaJIT would have to make it on the heap.
local function call_user(p)
  local f = rawget(env, FN)
  if type(f) ~= "function" then error("the script's function '" .. FN .. "' is not defined", 0) end
  return f(p, SKB)
end
local cur_p                        -- the packet of a protected call (xpcall passes no arguments on 5.1)
local function call_current() return call_user(cur_p) end

local function verdict_code(v)
  if v == 0 then return DROP elseif v == 1 then return ACCEPT elseif v == 4294967295 or v == -1 then return CONTINUE end
end

-- The error for a return value that is no verdict, at the line that returned it.
local function bad_verdict(v)
  local line = ret_line
  if not line then
    local info = getinfo(rawget(env, FN), "S")
    line = info and info.lastlinedefined
  end
  if type(v) ~= "number" then
    return { "function '" .. FN .. "' must return a verdict (NF_DROP, NF_ACCEPT or XT_CONTINUE), got " .. type(v),
             line }
  end
  return { "verdict " .. tostring(v) .. " is not supported here: return NF_DROP, NF_ACCEPT or XT_CONTINUE", line }
end

-- Runs the script on the packet in the API's buffer. Returns the verdict's code (DROP,
-- ACCEPT, CONTINUE), whether it wrote any byte, and the error {message, line} if it failed.
-- The drivers then compare with the input: a packet changed only if its bytes differ,
-- and only then are its checksums fixed.
local function process(len, ts)
  A.begin(len)
  now_ms = floor(ts)
  cur_p = A.packet(len)
  arm(BUDGET)
  ret_line = nil
  local ok, v = xpcall(call_current, handler)
  if not ok or exhausted then return ON_ERROR, false, as_error(v) end
  local code = verdict_code(v)
  if not code then return ON_ERROR, false, bad_verdict(v) end
  return code, A.dirty(), nil
end

local memcmp
if ffi then
  ffi.cdef("int memcmp(const void *, const void *, size_t);")
  memcmp = ffi.C.memcmp
end

-- ---------------------------------------------------------------- drivers
local buf, cap = nil, 0
local function ensure(n)
  if n > cap then
    cap = math.max(n, 2 * cap, 65536 + 64)
    buf = ffi and ffi.new("uint8_t[?]", cap) or {}
  end
end

local CHUNKSZ = 4096
local function load_string(s, n)               -- Lua table buffer, indexed from 0
  for i = 1, n, CHUNKSZ do
    local bytes = { sbyte(s, i, math.min(i + CHUNKSZ - 1, n)) }
    for j = 1, #bytes do buf[i + j - 2] = bytes[j] end
  end
end
local function table_string(n)
  local parts, t = {}, {}
  for i = 0, n - 1, CHUNKSZ do
    local last = math.min(i + CHUNKSZ, n) - 1
    for j = i, last do t[j - i + 1] = buf[j] end
    parts[#parts + 1] = schar(unpack(t, 1, last - i + 1))
  end
  return concat(parts)
end

-- One packet given as a string: code, changed, new bytes or nil, error message, error
-- line, number of printed lines waiting.
function E.run_one(s, ts)
  local n = #s
  ensure(n)
  if ffi then ffi.copy(buf, s, n) else load_string(s, n) end
  A.set_buffer(buf)
  local code, wrote, err = process(n, ts)
  if err then return code, false, nil, err[1], err[2], #OUT end
  local out
  if wrote then
    if ffi then
      if memcmp(buf, s, n) ~= 0 then
        if FIX then A.fix_checksums(n) end
        out = ffi.string(buf, n)
      end
    elseif table_string(n) ~= s then
      if FIX then A.fix_checksums(n) end
      out = table_string(n)
    end
  end
  return code, out ~= nil, out, nil, nil, #OUT
end

-- An IP packet behind the synthetic Ethernet header set with set_eth: one number (code,
-- + CHANGED + BODY_CHANGED if the IP packet changed, + FAILED if the script failed,
-- + ETH_CHANGED if the Ethernet header changed, + PRINTED if lines were printed), and the
-- new IP packet when it changed.
-- set_eth gets the header twice, with the EtherType of IPv4 and of IPv6 (core.netutil);
-- a packet whose version nibble is 6 goes behind the second.
local EH = cfg.eth_hlen                          -- bytes of an Ethernet header
local ETH4, ETH6, LAST_ERR = string.rep("\0", EH), string.rep("\0", EH), nil
function E.set_eth(h4, h6) ETH4, ETH6 = h4, h6 end
function E.last_error() return LAST_ERR[1], LAST_ERR[2] end
function E.run_ip(s, ts)
  local n = #s + EH
  local ETH = (sbyte(s, 1) or 0) >= 0x60 and (sbyte(s, 1) or 0) < 0x70 and ETH6 or ETH4
  ensure(n)
  if ffi then ffi.copy(buf, ETH, EH); ffi.copy(buf + EH, s, n - EH) else load_string(ETH .. s, n) end
  A.set_buffer(buf)
  local code, wrote, err = process(n, ts)
  if #OUT > 0 then code = code + PRINTED end
  if err then
    LAST_ERR = err
    return code + FAILED
  end
  if not wrote then return code end
  local eth_changed, ip_changed
  if ffi then
    eth_changed, ip_changed = memcmp(buf, ETH, EH) ~= 0, memcmp(buf + EH, s, n - EH) ~= 0
  else
    local now = table_string(n)
    eth_changed, ip_changed = ssub(now, 1, EH) ~= ETH, ssub(now, EH + 1) ~= s
  end
  if eth_changed then code = code + ETH_CHANGED end
  if not ip_changed then return code end
  if FIX then A.fix_checksums(n) end
  return code + CHANGED + BODY_CHANGED, ffi and ffi.string(buf + EH, n - EH) or ssub(table_string(n), EH + 1)
end

-- Frames in FFI memory, judged in place: base holds them back to back (each after `gap`
-- bytes the engine does not touch), L their int32 lengths, T their times in ms. Each frame is copied into one scratch buffer (PK) the script
-- works on: no pointer is made per packet (nothing for the collector), and base keeps the
-- input to compare with; a changed frame is copied back. One result byte per packet goes
-- to results (code, + CHANGED if it changed, + ETH_CHANGED if its first 14 bytes (the
-- Ethernet header) changed, + BODY_CHANGED if bytes after them changed, + FAILED if the
-- script failed; a failed packet keeps its input bytes). Returns the errors as one string
-- of "index:line:length:message" records.
local sformat = string.format
local PKCAP = 65536 + 64
local PK = ffi and ffi.new("uint8_t[?]", PKCAP)
-- The changed frames' checksums, fixed in a pass of their own: the sums loop over each
-- frame, and a loop inside the judging loop would cut LuaJIT's trace there (the script's
-- segments and fields could no longer be kept out of the heap).
local function fix_changed(base, L, count, results, pk, gap)
  local off = gap
  for i = 0, count - 1 do
    local n = L[i]
    if results[i] % (2 * CHANGED) >= CHANGED then     -- a failed packet is never CHANGED
      -- No pointer kept across the sums: one that lives past their loop is made on the heap.
      ffi.copy(pk, base + off, n)
      A.begin(n)                    -- the packet's length for the sums' bounds
      A.fix_checksums(n)
      ffi.copy(base + off, pk, n)
    end
    off = off + n + gap
  end
end
local function judge_in_place(base, L, T, count, results, gap)
  gap = gap or 0
  local errs, i, off = {}, 0, gap
  local most = 0
  for j = 0, count - 1 do if L[j] > most then most = L[j] end end
  if most > PKCAP then
    PKCAP = math.max(most, 65536 + 64)
    PK = ffi.new("uint8_t[?]", PKCAP)
  end
  local pk = PK
  -- One protected call for the whole batch; a failing packet ends it, is recorded,
  -- and the loop resumes with the next packet.
  local function loop()
    A.set_buffer(pk)
    while i < count do
      local n = L[i]
      local frame = base + off
      ffi.copy(pk, frame, n)
      A.begin(n)
      now_ms = floor(T[i])
      local p = A.packet(n)
      arm(BUDGET)
      ret_line = nil
      local v = call_user(p)
      if exhausted then error(budget_text, 0) end
      local code = verdict_code(v)
      if not code then pending = bad_verdict(v); error(pending, 0) end
      if A.dirty() then
        local head = n < EH and n or EH
        local eth = memcmp(pk, frame, head) ~= 0
        local rest = memcmp(pk + head, frame + head, n - head) ~= 0
        if eth or rest then
          ffi.copy(frame, pk, n)        -- checksums fixed after the batch (below)
          code = code + CHANGED + (eth and ETH_CHANGED or 0) + (rest and BODY_CHANGED or 0)
        end
      end
      results[i] = code
      off = off + n + gap
      i = i + 1
    end
  end
  while true do
    local ok, err = xpcall(loop, handler)
    if ok then break end
    err = as_error(err)
    errs[#errs + 1] = sformat("%d:%d:%d:", i, err[2] or 0, #err[1]) .. err[1]
    results[i] = ON_ERROR + FAILED
    off = off + L[i] + gap
    i = i + 1
  end
  if FIX then fix_changed(base, L, count, results, pk, gap) end
  return concat(errs)
end

if ffi then
  -- A batch handed over as strings: blob the packets back to back, lens their int32
  -- lengths, tss their float64 times in ms. Returns the result bytes, the blob after the
  -- scripts if any packet changed, the errors and the number of printed lines waiting.
  -- Only strings and numbers go back: nothing the host receives needs Lua memory to hand over.
  local results, rcap = nil, 0
  function E.run_batch(blob, lens, tss, count)
    local total = #blob
    ensure(total)
    ffi.copy(buf, blob, total)
    if count > rcap then rcap = count; results = ffi.new("uint8_t[?]", rcap) end
    local errs = judge_in_place(buf, ffi.cast("const int32_t *", ffi.cast("const char *", lens)),
                                ffi.cast("const double *", ffi.cast("const char *", tss)), count, results)
    local any = false
    for i = 0, count - 1 do
      if results[i] % (2 * CHANGED) >= CHANGED then any = true; break end
    end
    return ffi.string(results, count), any and ffi.string(buf, total) or nil, errs, #OUT
  end

  -- Frames already in FFI memory (the capture driver, capture.lua, reads them straight
  -- from the file), judged in place; `gap` bytes (a pcap record header) before each frame,
  -- if given. Returns the errors and the printed lines waiting.
  function E.run_frames(base, L, T, count, results, gap)
    return judge_in_place(base, L, T, count, results, gap), #OUT
  end
end

-- Frees what the script no longer holds; returns the memory in use, in KiB.
function E.collect()
  collectgarbage("collect")
  return collectgarbage("count")
end

return E
