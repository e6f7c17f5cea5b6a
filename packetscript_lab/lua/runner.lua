-- Runs a user script over packets: the sandbox, the per-packet call with its instruction
-- budget and error capture, verdict mapping, checksum fix-up, and the two drivers the
-- Python side calls (one packet as a string, or a batch over a shared FFI buffer).

local load_packet_api, cfg = ...
local A = {}
load_packet_api(A)

local type, tostring, tonumber, pairs, select, pcall, xpcall, error, setmetatable =
      type, tostring, tonumber, pairs, select, pcall, xpcall, error, setmetatable
local floor, sbyte, schar, sfind, ssub, sgsub, concat =
      math.floor, string.byte, string.char, string.find, string.sub, string.gsub, table.concat
local getinfo = debug.getinfo
local ffi = cfg.ffi and require("ffi") or nil
local unpack = unpack or table.unpack

local E = {}
local CHUNK = cfg.chunkname                   -- the user's chunk name, e.g. "cell"
local SOURCE = "=" .. CHUNK
local FN = cfg["function"]
local BUDGET = cfg.budget                      -- instructions per packet; 0 = unlimited
local ON_ERROR = cfg.on_error_code
local FIX = cfg.fix_checksums
A.configure { kernel_address_checksum = not FIX }

-- ---------------------------------------------------------------- errors and output
-- An error becomes {message, line}; line is the innermost frame of the user's chunk,
-- so API errors point at the script line that made the call.
local function escape(s) return (sgsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end
local PREFIX = "^" .. escape(CHUNK) .. ":(%d+): "

local function user_line()
  for level = 3, 60 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == SOURCE and info.currentline and info.currentline > 0 then
      return info.currentline
    end
  end
end

local BUDGET_MT

local function handler(msg)
  local line = user_line()
  if type(msg) ~= "string" then
    if getmetatable(msg) == BUDGET_MT then return msg end
    local ok, text = pcall(tostring, msg)
    msg = "error object is not a string: " .. (ok and type(text) == "string" and text or type(msg))
  end
  local _, _, l = sfind(msg, PREFIX)
  if l then
    msg = ssub(msg, #CHUNK + #l + 4)
    line = line or tonumber(l)
  end
  return { msg, line }
end

local OUT, MAX_OUT = {}, 1000
local function user_print(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  if #OUT < MAX_OUT then OUT[#OUT + 1] = concat(parts, "\t") end
end
function E.take_output()
  local out = OUT
  OUT = {}
  return out
end

-- ---------------------------------------------------------------- budget
-- The budget counts steps: loop iterations, function calls and jumps back to a label.
-- A check is written into the user's source at each of those places (same lines), so the
-- script stays JIT-compiled; a debug hook would switch LuaJIT to its slow interpreter for
-- every packet. Straight-line code between two checks is bounded by the source's length.
local steps, limit = 0, 0
BUDGET_MT = {}                                -- marks the budget's own error object
local function tick()
  steps = steps + 1
  if steps > limit then
    error(setmetatable({ "budget of " .. limit .. " steps (loop iterations and calls) exceeded: endless loop?",
                         user_line() }, BUDGET_MT), 0)
  end
end
local function arm(n) steps = 0; limit = n > 0 and n or math.huge end

local TICK = " __ps_tick() "
local function instrument(src)
  local out, from, i, n = {}, 1, 1, #src
  local in_params = false                     -- between 'function' and the end of its parameters
  local function insert_after(pos)
    out[#out + 1] = ssub(src, from, pos)
    out[#out + 1] = TICK
    from = pos + 1
  end
  while i <= n do
    local c = ssub(src, i, i)
    if c == "-" and ssub(src, i + 1, i + 1) == "-" then
      local _, e, eq = sfind(src, "^%[(=*)%[", i + 2)
      if e then
        local _, ce = sfind(src, "]" .. eq .. "]", e + 1, true)
        i = (ce or n) + 1
      else
        i = (sfind(src, "\n", i + 2, true) or n) + 1
      end
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = ssub(src, j, j)
        if d == "\\" then j = j + 2 elseif d == c or d == "\n" then break else j = j + 1 end
      end
      i = j + 1
    elseif c == "[" and sfind(src, "^%[=*%[", i) then
      local _, e, eq = sfind(src, "^%[(=*)%[", i)
      local _, ce = sfind(src, "]" .. eq .. "]", e + 1, true)
      i = (ce or n) + 1
    elseif sfind(c, "^[%a_]") then
      local _, e = sfind(src, "^[%w_]+", i)
      local w = ssub(src, i, e)
      if w == "do" or w == "repeat" then insert_after(e)
      elseif w == "function" then in_params = true end
      i = e + 1
    elseif sfind(c, "^%d") then
      local _, e = sfind(src, "^[%w_%.]+", i)
      i = e + 1
    elseif c == ")" and in_params then
      in_params = false
      insert_after(i)
      i = i + 1
    elseif c == ":" and ssub(src, i + 1, i + 1) == ":" then
      local _, e = sfind(src, "^::%s*[%a_][%w_]*%s*::", i)
      if e then insert_after(e); i = e + 1 else i = i + 2 end
    else
      i = i + 1
    end
  end
  out[#out + 1] = ssub(src, from)
  return "local __ps_tick = __ps_tick; " .. concat(out)
end
E.instrument = instrument

-- ---------------------------------------------------------------- sandbox
local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do if not (except and except[k]) then c[k] = v end end
  return c
end

local env = {}
for _, k in pairs { "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
                    "rawset", "rawlen", "select", "setmetatable", "getmetatable", "tonumber",
                    "tostring", "type", "xpcall", "_VERSION" } do
  env[k] = _G[k]
end
env.unpack = unpack
env.print = user_print

local function load_text(src, name)
  if type(src) ~= "string" then return nil, "only source text can be loaded" end
  if sbyte(src, 1) == 27 then return nil, "loading precompiled bytecode is not allowed" end
  src = instrument(src)
  local fn, err
  if setfenv then
    fn, err = loadstring(src, name)
    if fn then setfenv(fn, env) end
  else
    fn, err = load(src, name, "t", env)
  end
  return fn, err
end
env.loadstring = function(src, name) return load_text(src, name or "=(loadstring)") end
env.load = function(src, name) return load_text(src, name or "=(load)") end

local co = copy(coroutine)
env.coroutine = co

if cfg.profile == "lab" then
  env.string = copy(string, { dump = true })
  env.table = copy(table)
  env.math = copy(math)
  getmetatable("").__index = env.string
else
  -- xt_LUA opens only the base library (and coroutine): no string, table, math, io, os;
  -- strings have no methods.
  env.collectgarbage = collectgarbage
  env.gcinfo = rawget(_G, "gcinfo")
  env.newproxy = rawget(_G, "newproxy")
  getmetatable("").__index = nil
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
env.__ps_tick = tick
env._G = env
A.set_env(env)

local SKB = rawget(_G, "newproxy") and newproxy() or setmetatable({}, { __metatable = "skb" })

-- ---------------------------------------------------------------- compiling
function E.compile(src, prelude)
  if prelude then
    local pf, perr = load_text(prelude, "=prelude")
    if not pf then return false, perr, 0 end
    pf()
  end
  local fn, err = load_text(src, SOURCE)
  if not fn then
    local _, _, l = sfind(err, PREFIX)
    if l then return false, ssub(err, #CHUNK + #l + 4), tonumber(l) end
    return false, err, 0
  end
  arm(BUDGET > 0 and BUDGET * 10 or 0)           -- the top level may do some set-up work
  local ok, e = xpcall(fn, handler)
  if not ok then return false, e[1], e[2] or 0 end
  if type(env[FN]) ~= "function" then
    return false, "the script defines no function '" .. FN .. "'", 0
  end
  return true
end

-- ---------------------------------------------------------------- one packet
local cur_p
local function call_user()
  local f = env[FN]
  if type(f) ~= "function" then error("the script's function '" .. FN .. "' is not defined", 0) end
  return f(cur_p, SKB)
end

local function verdict_code(v)
  if v == 0 then return 0 elseif v == 1 then return 1 elseif v == 4294967295 or v == -1 then return 2 end
end

local function bad_verdict(v)
  local info = getinfo(env[FN], "S")
  if type(v) ~= "number" then
    return { "function '" .. FN .. "' must return a verdict (NF_DROP, NF_ACCEPT or XT_CONTINUE), got " .. type(v),
             info and info.lastlinedefined }
  end
  return { "verdict " .. tostring(v) .. " is not supported here: return NF_DROP, NF_ACCEPT or XT_CONTINUE",
           info and info.lastlinedefined }
end

-- Runs the script on the packet in the API's buffer. Returns code (0 drop, 1 accept,
-- 2 continue), whether it wrote any byte, and the error {message, line} if it failed.
-- The drivers then compare with the input: a packet changed only if its bytes differ,
-- and only then are its checksums fixed.
local function process(len, ts)
  A.begin(len)
  now_ms = floor(ts)
  cur_p = A.packet(len)
  arm(BUDGET)
  local ok, v = xpcall(call_user, handler)
  local code, err
  if ok then
    code = verdict_code(v)
    if not code then err = bad_verdict(v) end
  elseif type(v) == "table" then
    err = v
  else
    err = { tostring(v), nil }          -- out of memory: Lua skips the message handler
  end
  if err then return ON_ERROR, false, err end
  return code, A.dirty(), err
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
-- +4 if the IP packet or header changed, +8 if the script failed, +16 if the Ethernet
-- header changed, +32 if lines were printed), and the new IP packet when it changed.
local ETH, LAST_ERR = string.rep("\0", 14), nil
function E.set_eth(h) ETH = h end
function E.last_error() return LAST_ERR[1], LAST_ERR[2] end
function E.run_ip(s, ts)
  local n = #s + 14
  ensure(n)
  if ffi then ffi.copy(buf, ETH, 14); ffi.copy(buf + 14, s, n - 14) else load_string(ETH .. s, n) end
  A.set_buffer(buf)
  local code, wrote, err = process(n, ts)
  if #OUT > 0 then code = code + 32 end
  if err then
    LAST_ERR = err
    return code + 8
  end
  if not wrote then return code end
  local eth_changed, ip_changed
  if ffi then
    eth_changed, ip_changed = memcmp(buf, ETH, 14) ~= 0, memcmp(buf + 14, s, n - 14) ~= 0
  else
    local now = table_string(n)
    eth_changed, ip_changed = ssub(now, 1, 14) ~= ETH, ssub(now, 15) ~= s
  end
  if eth_changed then code = code + 16 end
  if not ip_changed then return code end
  if FIX then A.fix_checksums(n) end
  return code + 4, ffi and ffi.string(buf + 14, n - 14) or ssub(table_string(n), 15)
end

-- A batch (LuaJIT): blob holds the packets back to back, lens their int32 lengths, tss
-- their float64 times in ms. Returns one result byte per packet (code, + 4 if it changed,
-- + 16 if its first 14 bytes (the Ethernet header) changed, + 32 if bytes after them
-- changed, + 8 if the script failed), the blob after the scripts if any packet changed,
-- and the errors as a list of {index, message, line}.
if ffi then
  local results, rcap = nil, 0
  function E.run_batch(blob, lens, tss, count)
    local total = #blob
    ensure(total)
    ffi.copy(buf, blob, total)
    if count > rcap then rcap = count; results = ffi.new("uint8_t[?]", rcap) end
    local L = ffi.cast("const int32_t *", ffi.cast("const char *", lens))
    local T = ffi.cast("const double *", ffi.cast("const char *", tss))
    local original = ffi.cast("const uint8_t *", blob)
    local errs, any, i, off = {}, false, 0, 0
    -- One protected call for the whole batch; a failing packet ends it, is recorded,
    -- and the loop resumes with the next packet.
    local function loop()
      while i < count do
        local n = L[i]
        A.set_buffer(buf + off)
        A.begin(n)
        now_ms = floor(T[i])
        cur_p = A.packet(n)
        arm(BUDGET)
        local v = call_user()
        local code = verdict_code(v)
        if not code then error(setmetatable(bad_verdict(v), BUDGET_MT), 0) end
        if A.dirty() then
          local head = n < 14 and n or 14
          local eth = memcmp(buf + off, original + off, head) ~= 0
          local rest = memcmp(buf + off + head, original + off + head, n - head) ~= 0
          if eth or rest then
            if FIX then A.fix_checksums(n) end
            any = true
            code = code + 4 + (eth and 16 or 0) + (rest and 32 or 0)
          end
        end
        results[i] = code
        off = off + n
        i = i + 1
      end
    end
    while true do
      local ok, err = xpcall(loop, handler)
      if ok then break end
      if type(err) ~= "table" then err = { tostring(err), nil } end
      errs[#errs + 1] = { i, err[1], err[2] }
      results[i] = ON_ERROR + 8                -- its bytes are not used: the input stands
      off = off + L[i]
      i = i + 1
    end
    return ffi.string(results, count), any and ffi.string(buf, total) or nil, errs, #OUT
  end
end

return E
