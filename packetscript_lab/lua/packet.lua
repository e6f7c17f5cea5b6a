-- The PacketScript packet API over one packet buffer.
--
-- Loaded into every Lua runtime before the user script. It implements the protocol
-- buffers of xt_LUA (raw, eth, ip, icmp, tcp, tcp_opt, udp, tftp and Lua-defined
-- protocols) with the same names, type ids, fields and verdicts, minus its bugs: field
-- objects stay bound to their field, every access is bounds-checked, and offsets follow
-- the headers (IHL, TCP data offset, TFTP opcode). Beyond xt_LUA: IPv6 (ip6, icmp6).
--
-- Which protocols exist, their ids, fields, offsets and widths, and how a layer finds the
-- next come from the protocol table (packetscript_lab/core/protocols.py, handed over as
-- TABLE); this file implements the field kinds and locators the table names.
--
-- The packet lives in `B`, indexed from 0: an FFI uint8_t* on LuaJIT, a Lua table
-- elsewhere. Both accept B[i] and B[i] = v, so the same code serves every runtime.
-- Numbers are handled with arithmetic only (no bit library) for the same reason.

local A, TABLE = ...               -- api table filled here; the protocol table (core/protocols.py)
local IP6_EXT = TABLE.ip6_extensions   -- next header -> {units, added, fixed} length rule
local IP6_FRAG = TABLE.ip6_fragment    -- the fragment header's next-header value
local floor, type, error, tostring, tonumber = math.floor, type, error, tostring, tonumber
local setmetatable, getmetatable, pairs, ipairs, rawget, rawequal, pcall = setmetatable, getmetatable, pairs, ipairs, rawget, rawequal, pcall
local sbyte, schar, sformat, sfind = string.byte, string.char, string.format, string.find

local B                            -- current packet buffer (set by the runner)
local PLEN = 0                     -- current packet length
local GEN = 0                      -- which packet this is: segments of earlier ones are refused
local dirty = false                -- the script changed at least one byte
local fix_addr_checksum = false    -- kernel-style incremental IP checksum on address set

function A.set_buffer(buf) B = buf end
function A.begin(len) PLEN = len; dirty = false; GEN = GEN + 1 end
function A.dirty() return dirty end
local SKB                          -- the script's `skb` argument (set by the runner)
local guard = function(...) return ... end   -- the runner's check after a protected call
function A.configure(opts)
  fix_addr_checksum = opts.kernel_address_checksum
  SKB, guard = opts.skb, opts.guard or guard
end

-- A whole number given as a number or a numeric string, as Lua 5.1's luaL_checkinteger
-- takes it (the module's setters read their argument that way); nil when it is neither.
local function whole(v)
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

local function wr(i, v)
  if B[i] ~= v then B[i] = v; dirty = true end
end

-- ---------------------------------------------------------------- byte arrays
-- Copies own a Lua table; views read and write the packet. Userdata (newproxy) where
-- available, because Lua 5.1 and LuaJIT ignore __len on tables.
local BA = setmetatable({}, { __mode = "k" })
local ba_mt = {}
local new_ba_object
if newproxy then
  local proto = newproxy(true)
  local mt = getmetatable(proto)
  for k, v in pairs(ba_mt) do mt[k] = v end
  ba_mt = mt
  new_ba_object = function() return newproxy(proto) end
else
  new_ba_object = function() return setmetatable({}, ba_mt) end
end

local function ba_state(a, i)
  local st = BA[a]
  if st.g and st.g ~= GEN then
    error("this byte array views an earlier packet: copy the bytes you need to keep", 0)
  end
  if type(i) ~= "number" then
    local n = whole(i)
    if not n then error("byte arrays are indexed with integers from 0 (got " .. type(i) .. ")", 0) end
    i = n
  end
  if i < 0 or i >= st.n or i % 1 ~= 0 then
    error("index out of range: " .. tostring(i) .. " (byte array of length " .. st.n .. ")", 0)
  end
  return st, i
end
ba_mt.__index = function(a, i)
  local st
  st, i = ba_state(a, i)
  if st.t then return st.t[i] end
  return B[st.o + i]
end
ba_mt.__newindex = function(a, i, v)
  local st
  st, i = ba_state(a, i)
  if type(v) ~= "number" then v = whole(v) end
  if not v or v < 0 or v > 255 or v % 1 ~= 0 then
    error("cannot cast value to char: byte values are integers 0..255", 0)
  end
  if st.t then st.t[i] = v else wr(st.o + i, v) end
end
ba_mt.__len = function(a) return BA[a].n end
ba_mt.__tostring = function(a)
  local st, parts = BA[a], {}
  for i = 0, st.n - 1 do parts[#parts + 1] = sformat("%02x", st.t and st.t[i] or B[st.o + i]) end
  return "byte_array: length: " .. st.n .. "  value: " .. table.concat(parts, " ")
end
ba_mt.__metatable = "byte_array"

local function ba_copy(o, n)
  local t = {}
  for i = 0, n - 1 do t[i] = B[o + i] end
  local a = new_ba_object()
  BA[a] = { t = t, n = n }
  return a
end
local function ba_view(o, n)
  local a = new_ba_object()
  BA[a] = { o = o, n = n, g = GEN }
  return a
end
local function ba_read(a)          -- byte array or string -> function(i) -> byte, length
  if type(a) == "string" then
    return function(i) return sbyte(a, i + 1) end, #a
  end
  local st = BA[a]
  if not st then return nil end
  if st.t then return function(i) return st.t[i] end, st.n end
  if st.g ~= GEN then error("this byte array views an earlier packet: copy the bytes you need to keep", 0) end
  return function(i) return B[st.o + i] end, st.n
end

-- ---------------------------------------------------------------- checksums
local function sum16(o, n, s)
  if o < 0 or n < 0 or o + n > PLEN then error("checksum range outside the packet", 0) end
  s = s or 0
  local last = o + n - 1
  for i = o, last - 1, 2 do s = s + B[i] * 256 + B[i + 1] end
  if n % 2 == 1 then s = s + B[last] * 256 end
  return s
end
-- LuaJIT: the same sum read through 32-bit loads from the (aligned) buffer. Little-endian
-- words, folded to 16 bits and byte-swapped, give the big-endian sum (RFC 1071: the sum does
-- not depend on byte order); odd starts and the last 0..3 bytes are added as above.
local B16, B32                     -- the buffer as uint16_t* and uint32_t* (LuaJIT, aligned)
local little = rawget(_G, "jit") and (jit.arch == "x64" or jit.arch == "x86" or jit.arch == "arm64")
local ffi = little and require("ffi")
if little then
  local u16p, u32p = ffi.typeof("uint16_t *"), ffi.typeof("uint32_t *")
  local byte_sum = sum16
  function A.set_buffer(buf)
    B, B16, B32 = buf, nil, nil
    if type(buf) == "cdata" and tonumber(ffi.cast("uintptr_t", buf)) % 4 == 0 then
      B16, B32 = ffi.cast(u16p, buf), ffi.cast(u32p, buf)
    end
  end
  sum16 = function(o, n, s)
    if not B32 or o % 2 == 1 then return byte_sum(o, n, s) end
    if o < 0 or n < 0 or o + n > PLEN then error("checksum range outside the packet", 0) end
    local w = 0
    if o % 4 == 2 and n >= 2 then w = B16[o / 2]; o = o + 2; n = n - 2 end
    local first = o / 4
    local words = floor(n / 4)
    -- Short runs (addresses, an option-less IPv4 header) written out: a loop would end
    -- the trace, and these come once or twice per packet.
    if words == 2 then
      w = w + B32[first] + B32[first + 1]
    elseif words == 4 then
      w = w + B32[first] + B32[first + 1] + B32[first + 2] + B32[first + 3]
    else
      for i = first, first + words - 1 do w = w + B32[i] end
    end
    w = w % 0x10000 + floor(w / 0x10000)          -- folded as fold() does (below 2^48)
    w = w % 0x10000 + floor(w / 0x10000)
    w = w % 0x10000 + floor(w / 0x10000)
    s = (s or 0) + (w % 256) * 256 + floor(w / 256)
    local at, left = o + words * 4, n - words * 4
    if left >= 2 then s = s + B[at] * 256 + B[at + 1]; at = at + 2; left = left - 2 end
    if left == 1 then s = s + B[at] * 256 end
    return s
  end
end
local function fold(s)
  -- Three steps fold any sum below 2^48 (every sum here) without a loop, which on LuaJIT
  -- would end the trace; the loop stays for anything larger.
  s = s % 0x10000 + floor(s / 0x10000)
  s = s % 0x10000 + floor(s / 0x10000)
  s = s % 0x10000 + floor(s / 0x10000)
  while s > 0xffff do s = s % 0x10000 + floor(s / 0x10000) end
  return s
end
local function put16(o, v) B[o] = floor(v / 256); B[o + 1] = v % 256 end
local function get16(o) return B[o] * 256 + B[o + 1] end

-- The layer-4 length and the pseudo-header sum (addresses, and for IPv4 nothing more: the
-- caller adds protocol and length) of the segment at l4 inside the IP packet at ip.
local function l4_span(ip, l4)
  if floor(B[ip] / 16) == 6 then
    local stop = ip + 40 + get16(ip + 4)
    if stop > PLEN or stop == ip + 40 then stop = PLEN end
    if l4 > stop then stop = l4 end
    return stop - l4, sum16(ip + 8, 32)
  end
  local ihl = (B[ip] % 16) * 4
  local tot = get16(ip + 2)
  if tot < ihl or ip + tot > PLEN then tot = PLEN - ip end
  local l4len = ip + tot - l4
  if l4 < 0 or l4 + l4len > PLEN then l4len = PLEN - l4 end
  return l4len, sum16(ip + 12, 8)
end

-- The upper layer of an IPv6 packet at ip: its protocol and offset, and whether the packet
-- is a fragment (extension headers walked as IP6_EXT says).
local function ip6_upper(ip, len)
  local nh, off, frag = B[ip + 6], ip + 40, false
  while IP6_EXT[nh] and off + 2 <= len do
    local r = IP6_EXT[nh]
    local size = r[3] + (B[off + 1] + r[2]) * r[1]
    if off + size > len then break end
    if nh == IP6_FRAG then frag = true end
    nh, off = B[off], off + size
  end
  return nh, off, frag
end

-- The TCP, UDP or ICMPv6 checksum of the segment at l4 (l4len bytes; pseudo: the address sum).
local function fix_l4(ip, l4, proto, l4len, pseudo)
  if proto == 6 and l4len >= 20 then
    B[l4 + 16] = 0; B[l4 + 17] = 0
    put16(l4 + 16, 0xffff - fold(sum16(l4, l4len, pseudo + proto + l4len)))
  elseif proto == 17 and l4len >= 8 then
    local v6 = floor(B[ip] / 16) == 6
    if not v6 and B[l4 + 6] == 0 and B[l4 + 7] == 0 then return end  -- IPv4 UDP without checksum
    local ulen = get16(l4 + 4)                                    -- the checksum covers what it declares
    if ulen >= 8 and ulen <= l4len then l4len = ulen end
    local c = 0xffff - fold(sum16(l4, l4len, pseudo + proto + l4len - get16(l4 + 6)))
    put16(l4 + 6, c == 0 and 0xffff or c)
  elseif proto == 58 and l4len >= 4 then
    B[l4 + 2] = 0; B[l4 + 3] = 0
    put16(l4 + 2, 0xffff - fold(sum16(l4, l4len, pseudo + proto + l4len)))
  end
end

-- Recompute the IPv4, TCP, UDP, ICMP and ICMPv6 checksums of an Ethernet frame in B (IPv4 or IPv6).
-- Fragments keep their L4 checksum: it covers bytes this packet does not have.
function A.fix_checksums(len)
  if len >= 54 and B[12] == 0x86 and B[13] == 0xdd and floor(B[14] / 16) == 6 then
    local proto, l4, frag = ip6_upper(14, len)
    if not frag then
      local l4len, pseudo = l4_span(14, l4)
      fix_l4(14, l4, proto, l4len, pseudo)
    end
    return
  end
  if len < 34 or B[12] ~= 8 or B[13] ~= 0 then return end
  local ip = 14
  local vihl = B[ip]
  if floor(vihl / 16) ~= 4 then return end
  local ihl = (vihl % 16) * 4
  if ihl < 20 or ip + ihl > len then return end
  B[ip + 10] = 0; B[ip + 11] = 0
  put16(ip + 10, 0xffff - fold(sum16(ip, ihl)))
  local tot = get16(ip + 2)
  if tot < ihl or ip + tot > len then tot = len - ip end
  local frag = B[ip + 6] % 64 >= 32 or (B[ip + 6] % 32) * 256 + B[ip + 7] ~= 0
  if frag then return end
  local proto, l4, l4len = B[ip + 9], ip + ihl, tot - ihl
  if proto == 6 or proto == 17 then
    fix_l4(ip, l4, proto, l4len, sum16(ip + 12, 8))
  elseif proto == 1 and l4len >= 4 then
    B[l4 + 2] = 0; B[l4 + 3] = 0
    put16(l4 + 2, 0xffff - fold(sum16(l4, l4len)))
  end
end

-- LuaJIT: the common case (IPv4 without options) summed in the buffer's own byte order,
-- through 16- and 32-bit loads, and stored the same way (RFC 1071: a checksum computed in
-- either order is right when stored in that order). Same rules as above; everything else
-- (options, IPv6, other frames) goes the way above.
if little then
  local generic = A.fix_checksums
  local function lefold(w)                -- a sum below 2^48 folded to 16 bits
    w = w % 0x10000 + floor(w / 0x10000)
    w = w % 0x10000 + floor(w / 0x10000)
    return w % 0x10000 + floor(w / 0x10000)
  end
  local function lesum(o, n)              -- o even: the bytes as little-endian 16-bit words
    local w = 0
    if o % 4 == 2 and n >= 2 then w = B16[o / 2]; o = o + 2; n = n - 2 end
    local first, words = o / 4, floor(n / 4)
    for i = first, first + words - 1 do w = w + B32[i] end
    local at, left = o + words * 4, n - words * 4
    if left >= 2 then w = w + B16[at / 2]; at = at + 2; left = left - 2 end
    if left == 1 then w = w + B[at] end   -- a last odd byte is the high byte of its word
    return w
  end
  -- Byte offsets: IPv4 header at 14 (checksum 24, addresses 26..33), layer 4 at 34.
  function A.fix_checksums(len)
    if not B32 or len < 34 or B[12] ~= 8 or B[13] ~= 0 or B[14] ~= 0x45 then return generic(len) end
    B16[12] = 0
    B16[12] = 0xffff - lefold(B16[7] + B16[8] + B16[9] + B16[10] + B16[11]
                              + B16[13] + B16[14] + B16[15] + B16[16])
    local tot = B[16] * 256 + B[17]
    if tot < 20 or 14 + tot > len then tot = len - 14 end
    if B[20] % 64 >= 32 or (B[20] % 32) * 256 + B[21] ~= 0 then return end   -- a fragment
    local proto, l4len = B[23], tot - 20
    local addrs = B16[13] + B16[14] + B16[15] + B16[16]
    -- 256 * x is x with its bytes swapped, modulo 0xffff: the protocol and length words
    if proto == 6 then
      if l4len >= 20 then
        B16[25] = 0
        B16[25] = 0xffff - lefold(lesum(34, l4len) + addrs + 256 * (6 + l4len))
      end
    elseif proto == 17 then
      if l4len < 8 or (B[40] == 0 and B[41] == 0) then return end   -- no checksum in use
      local ulen = B[38] * 256 + B[39]              -- the checksum covers what it declares
      if ulen >= 8 and ulen <= l4len then l4len = ulen end
      local c = 0xffff - lefold(lesum(34, l4len) + addrs + 256 * (17 + l4len) - B16[20])
      B16[20] = c == 0 and 0xffff or c
    elseif proto == 1 and l4len >= 4 then
      B16[18] = 0
      B16[18] = 0xffff - lefold(lesum(34, l4len))
    end
  end
end

-- ---------------------------------------------------------------- protocols
local PROTO = {}          -- id -> protocol
local BYNAME = {}         -- name -> protocol
local supported = {}      -- id -> name, the script's `supported_protocols`
A.supported = supported

-- Segments and field objects hold only their slot number and the packet they were made
-- for; their state (offset, length, offset changes, where their IP header is, what kind of
-- object the slot holds) lives in per-packet arrays indexed by slot, out of the script's
-- reach. An object of an earlier packet is refused. Nothing else keeps the object: on
-- LuaJIT, one that does not outlive the script's call is never made on the heap
-- (allocation sinking), which is most of the engine's speed on a batch.
local SO, SN, SIP, SCH, SMT = {}, {}, {}, {}, {}
local LIVEN = 0
local function read_only()
  error("segments and fields are read and changed through their methods (get, set, data, ...)", 0)
end
local function new_object(mt, o, n, ch, ip)
  local k = LIVEN + 1
  LIVEN = k
  SO[k], SN[k], SCH[k], SIP[k], SMT[k] = o, n, ch or false, ip or false, mt
  return setmetatable({ k, GEN }, mt)
end
local function seg_new(p, o, n, ch, ip) return new_object(p.mt, o, n, ch, ip) end
function A.packet(len) LIVEN = 0; return seg_new(PROTO[0], 0, len) end

local function refuse(seg, what, k, mt)
  if type(seg) ~= "table" or not getmetatable(seg) or type(k) ~= "number" then
    error("bad self for '" .. what .. "': call it with a colon, as obj:" .. what .. "()", 0)
  end
  if rawget(seg, 2) == GEN and k >= 1 and k <= LIVEN and k % 1 == 0 and SMT[k] ~= mt then
    error("'" .. what .. "' belongs to another kind of field: call it on the field it came from, as obj:"
          .. what .. "()", 0)
  end
  error("'" .. what .. "' on a segment of an earlier packet: keep numbers or strings between packets, not segments", 0)
end

-- The slot of a segment or field that a method was called on: made by the API for this
-- packet and, for a field's own getter and setter (mt given), a field of that kind. Edited
-- slot or packet numbers can only name another object of this packet of the same kind:
-- every access stays inside the packet.
local function state(seg, what, mt)
  local k = type(seg) == "table" and rawget(seg, 1)
  if type(k) ~= "number" or rawget(seg, 2) ~= GEN or k < 1 or k > LIVEN or k % 1 ~= 0
     or (mt and SMT[k] ~= mt) then
    refuse(seg, what, k, mt)
  end
  return k
end

-- Where a field's IP header starts, checked to lie inside the packet (a truncated packet
-- can end inside it).
local function ip_header(st, what)
  local ip = SIP[st]
  if ip and ip + (floor(B[ip] / 16) == 6 and 40 or 20) > PLEN then
    error("'" .. what .. "' needs the whole IP header, and this packet ends inside it", 0)
  end
  return ip
end

-- A getter or setter, given its field's state. Fixed arguments, not `...`: LuaJIT keeps
-- a call with them inside the trace. `mt`: the field kind it serves (nil: any segment).
local function checked(fn, what, mt)
  return function(f, a, b)
    return fn(state(f, what, mt), a, b)
  end
end

-- Payload conversion: seg:data(TYPE) gives a TYPE segment or false.
local function convert(p, seg, st, o, n, t)
  local target = PROTO[t]
  if not target then error("provided protocol is unknown: " .. tostring(t), 0) end
  if not p.has(st, t, seg) then return false end
  local ch
  if target.changes then ch = target.changes(seg_new(target, o, n)) end
  return seg_new(target, o, n, ch, SIP[st] or (p.ip and SO[st]) or nil)
end

local function setdata(f, v)         -- copy a byte array (or a string) into the field
  local rd, n = ba_read(v)
  if not rd then error("this field is set from a byte array (or a string)", 0) end
  if n > SN[f] then error("provided byte array too big for given packet segment", 0) end
  for i = 0, n - 1 do wr(SO[f] + i, rd(i)) end
  return true
end
local function raw_get(f) return ba_copy(SO[f], SN[f]) end
local function raw_set(f, v)          -- fill with one byte value, or copy a byte array in
  if type(v) ~= "number" then
    local n = whole(v)
    if not n then
      if not ba_read(v) then error("cannot cast value to char: give a byte value 0..255 or a byte array", 0) end
      return setdata(f, v)
    end
    v = n
  end
  if v < 0 or v > 255 or v % 1 ~= 0 then error("cannot cast value to char: " .. tostring(v), 0) end
  for i = SO[f], SO[f] + SN[f] - 1 do wr(i, v) end
  return true
end

local function int_get(f)
  local v = 0
  for i = SO[f], SO[f] + SN[f] - 1 do v = v * 256 + B[i] end
  return v
end
local function int_set(f, v)
  if type(v) ~= "number" then
    v = whole(v)
    if not v then error("this field is set from a number, got " .. type(v), 0) end
  end
  v = floor(floor(v) % 256 ^ SN[f])  -- truncated to the field width, as the C setters do
  for i = SO[f] + SN[f] - 1, SO[f], -1 do wr(i, floor(v % 256)); v = floor(v / 256) end
  return true
end
local function nib_hi_get(f) return floor(B[SO[f]] / 16) end
local function nib_lo_get(f) return B[SO[f]] % 16 end
local function nib_set(hi, lo_bound, hi_bound, msg)
  return function(f, v)
    v = whole(v)
    if not v or v % 1 ~= 0 or v < lo_bound or v > hi_bound then error(msg, 0) end
    local b = B[SO[f]]
    if hi then wr(SO[f], v * 16 + b % 16) else wr(SO[f], b - b % 16 + v) end
    return true
  end
end
-- Bit fields: n counts from the most significant bit of the field's byte, starting at 1.
local function bit_index(n)
  n = whole(n)
  if not n or n < 1 or n > 8 or n % 1 ~= 0 then
    error("bit number must be 1..8 (1 is the most significant bit)", 0)
  end
  return floor(2 ^ (8 - n))
end
local function bit_get(f, n)
  local m = bit_index(n)
  return floor(B[SO[f]] / m) % 2 == 1
end
local function bit_set(f, n, on)    -- set(n) sets the bit; set(n, false) clears it
  local m, b = bit_index(n), B[SO[f]]
  local is = floor(b / m) % 2 == 1
  if on == false then
    if is then wr(SO[f], b - m) end
  elseif not is then
    wr(SO[f], b + m)
  end
  return true
end

local ADDR = {}                     -- "a.b.c.d" -> {a, b, c, d}, parsed once
local function parse_addr(s)
  local a = ADDR[s]
  if a then return a end
  if type(s) ~= "string" then error("invalid ip addr: expected a string \"a.b.c.d\"", 0) end
  local _, _, x1, x2, x3, x4 = sfind(s, "^%s*(%d+)%.(%d+)%.(%d+)%.(%d+)%s*$")
  a = { tonumber(x1), tonumber(x2), tonumber(x3), tonumber(x4) }
  if not x4 or a[1] > 255 or a[2] > 255 or a[3] > 255 or a[4] > 255 then
    error("invalid ip addr: " .. s, 0)
  end
  ADDR[s] = a
  return a
end
local function addr_get(f)
  return B[SO[f]] .. "." .. B[SO[f] + 1] .. "." .. B[SO[f] + 2] .. "." .. B[SO[f] + 3]
end
-- An incremental checksum update at c for a 4-byte change old1 old2 -> new at o (RFC 1624).
local function csum_replace4(c, old1, old2, o)
  local s2 = (0xffff - get16(c)) + (0xffff - old1) + get16(o) + (0xffff - old2) + get16(o + 2)
  local v = 0xffff - fold(s2)
  B[c] = floor(v / 256); B[c + 1] = v % 256
end
-- Where the TCP or UDP checksum of the address's packet is, when the module would patch it
-- (given skb): a first or only fragment of TCP or UDP whose checksum lies in the packet.
local function l4_check_at(ip)
  local pr, ihl = B[ip + 9], (B[ip] % 16) * 4
  if B[ip + 6] % 32 ~= 0 or B[ip + 7] ~= 0 then return nil end      -- a later fragment
  local c = (pr == 6 and ip + ihl + 16) or (pr == 17 and ip + ihl + 6) or nil
  if not c or c + 2 > PLEN then return nil end
  if pr == 17 and B[c] == 0 and B[c + 1] == 0 then return nil end   -- UDP without checksum
  return c
end
local function addr_set(f, s, skb)
  local a = parse_addr(s)
  local old1, old2 = get16(SO[f]), get16(SO[f] + 2)
  local o = SO[f]                     -- written out: a 4-step loop would cost LuaJIT a trace
  wr(o, a[1]); wr(o + 1, a[2]); wr(o + 2, a[3]); wr(o + 3, a[4])
  local ip = fix_addr_checksum and SIP[f]      -- an IPv4 header: its 20 bytes must be there
  if ip then
    if ip + 20 > PLEN then error("'set' needs the whole IP header, and this packet ends inside it", 0) end
    -- What xt_LUA does in the kernel: the IP header checksum updated incrementally, and
    -- with the skb argument the TCP or UDP checksum too (inet_proto_csum_replace4).
    csum_replace4(ip + 10, old1, old2, o)
    local c = skb ~= nil and rawequal(skb, SKB) and l4_check_at(ip)
    if c then csum_replace4(c, old1, old2, o) end
  end
  return true
end

local function str_get(f)
  local t = {}
  for i = 0, SN[f] - 1 do t[i + 1] = schar(B[SO[f] + i]) end
  return table.concat(t)
end
local function str_set(f, v)
  if type(v) == "number" then return raw_set(f, v) end
  if type(v) ~= "string" or #v ~= SN[f] then
    error("a string field is set from a string of the same length (" .. SN[f] .. " bytes)", 0)
  end
  for i = 0, SN[f] - 1 do wr(SO[f] + i, sbyte(v, i + 1)) end
  return true
end

-- Define a protocol. fields: list of {name, bit_offset, bit_length, get, set}.
-- Optional: payload (field name), has(seg, type, o, n), locate[name](seg) -> rel_off, len.
local function protocol(def)
  local p = { id = def.id, name = def.name, fields = {}, payload = def.payload,
              has = def.has, changes = def.changes, ip = def.ip }
  p.methods = {}
  local function describe(s)
    local st = rawget(s, 1)
    return "type: " .. def.name .. ", offset: " .. tostring(SO[st]) .. ", length: " .. tostring(SN[st])
  end
  p.mt = { __index = p.methods, __newindex = read_only, __metatable = def.name, __tostring = describe }
  local m = p.methods
  function m.raw(seg, off, len)
    local st = state(seg, "raw")
    off, len = whole(off) or off, whole(len) or len
    if type(off) ~= "number" or type(len) ~= "number" or off % 1 ~= 0 or len % 1 ~= 0 then
      error("raw(offset, length) takes two whole numbers", 0)
    end
    if off < 0 or len < 0 or off + len > SN[st] then return false end
    return seg_new(p, SO[st] + off, len)
  end
  function m.get_offset(seg) return SO[state(seg, "get_offset")] end
  function m.get_size(seg) return SN[state(seg, "get_size")] end
  function m.to_bytes(seg) local st = state(seg, "to_bytes"); return ba_copy(SO[st], SN[st]) end
  m.get, m.set = checked(raw_get, "get"), checked(raw_set, "set")
  for idx, fd in ipairs(def.fields) do
    local name, bo, bl = fd[1], fd[2], fd[3]
    local accessors = {}
    local fmt = { __index = setmetatable(accessors, { __index = m }), __newindex = read_only,
                  __metatable = def.name, __tostring = describe }
    accessors.get, accessors.set = checked(fd[4] or raw_get, "get", fmt), checked(fd[5] or raw_set, "set", fmt)
    local locate = def.locate and def.locate[name]
    local is_payload = (name == def.payload)
    local byte_off, byte_len = floor(bo / 8), floor(bl / 8)   -- as the module counts them
    if bl > 0 and byte_len == 0 then byte_len = 1 end
    if fd.bytes then byte_off, byte_len = fd.bytes[1], fd.bytes[2] end
    m[name] = function(seg, t)
      local st = state(seg, name)
      local ro, rl
      if locate then
        ro, rl = locate(st)
      elseif SCH[st] then                  -- offsets adjusted by a dynamic protocol's get_field_changes
        local dc, dl = SCH[st][1][idx] or 0, SCH[st][2][idx] or 0
        if type(dc) ~= "number" or type(dl) ~= "number" then
          error("get_field_changes gave a change for field '" .. name .. "' that is not a number", 0)
        end
        local cb, cl = bo + dc, bl + dl
        ro, rl = floor(cb / 8), floor(cl / 8)
        if cl > 0 and rl == 0 then rl = 1 end
        if cl == 0 then rl = SN[st] - ro end
      else
        ro, rl = byte_off, (bl == 0) and (SN[st] - byte_off) or byte_len
      end
      if ro < 0 or rl < 0 or ro + rl > SN[st] or ro % 1 ~= 0 or rl % 1 ~= 0 then
        error(sformat("%s field '%s' (bytes %s..%s) is beyond the end of the %d-byte segment",
                      def.name, name, tostring(ro), tostring(ro + rl - 1), SN[st]), 0)
      end
      if type(t) == "number" then
        if is_payload then return convert(p, seg, st, SO[st] + ro, rl, t) end
        if t == fd.as then return seg_new(PROTO[t], SO[st] + ro, rl) end
      end
      return new_object(fmt, SO[st] + ro, rl, nil, SIP[st] or (p.ip and SO[st]) or nil)
    end
  end
  PROTO[p.id], BYNAME[p.name] = p, p
  supported[p.id] = p.name
  A.globals[p.name] = p.id
  return p
end

A.globals = {}

-- ---------------------------------------------------------------- field kinds
-- How each kind of field in the protocol table (core/protocols.py) reads and writes.
local function frag_get(f) return (B[SO[f]] % 32) * 256 + B[SO[f] + 1] end
local function frag_set(f, v)
  v = whole(v)
  if not v then error("frag_off is set from a number", 0) end
  v = floor(v) % 8192
  wr(SO[f], B[SO[f]] - B[SO[f]] % 32 + floor(v / 256)); wr(SO[f] + 1, v % 256)
  return true
end

-- A run of bits that need not start or end on a byte (IPv6 traffic class, flow label).
local function bitfield(fd)
  local tail = (8 - (fd.bit_offset + fd.bit_length) % 8) % 8   -- bits after it in its last byte
  local unit, span = floor(2 ^ tail), floor(2 ^ fd.bit_length)   -- integers on 5.4 too
  local function get(f)
    local v = 0
    for i = SO[f], SO[f] + SN[f] - 1 do v = v * 256 + B[i] end
    return floor(v / unit) % span
  end
  local function set(f, v)
    v = whole(v)
    if not v then error("this field is set from a number, got " .. type(v), 0) end
    v = floor(v) % span
    local all = 0
    for i = SO[f], SO[f] + SN[f] - 1 do all = all * 256 + B[i] end
    all = all - (floor(all / unit) % span) * unit + v * unit
    for i = SO[f] + SN[f] - 1, SO[f], -1 do wr(i, all % 256); all = floor(all / 256) end
    return true
  end
  return get, set
end

-- IPv6 addresses: read as RFC 5952 text ("fd77::1"), written from any valid text form.
local function addr6_get(f)
  local o, g = SO[f], {}
  for i = 0, 7 do g[i + 1] = get16(o + 2 * i) end
  local best, best_n, run, run_n = 0, 0, 0, 0        -- the longest run of zero groups (>= 2)
  for i = 1, 8 do
    if g[i] == 0 then
      if run_n == 0 then run = i end
      run_n = run_n + 1
      if run_n > best_n then best, best_n = run, run_n end
    else
      run_n = 0
    end
  end
  local parts = {}
  for i = 1, 8 do parts[i] = sformat("%x", g[i]) end
  if best_n < 2 then return table.concat(parts, ":") end
  return table.concat(parts, ":", 1, best - 1) .. "::" .. table.concat(parts, ":", best + best_n, 8)
end
local ADDR6 = {}
local function groups6(s, into)
  if s == "" then return true end
  for part in string.gmatch(s .. ":", "([^:]*):") do
    if not sfind(part, "^%x%x?%x?%x?$") then return false end
    into[#into + 1] = tonumber(part, 16)
  end
  return true
end
local function parse_addr6(s)
  local g = ADDR6[s]
  if g then return g end
  if type(s) ~= "string" then error("invalid ipv6 addr: expected a string such as \"fd77::1\"", 0) end
  local head, tail = {}, {}
  local _, _, a, b = sfind(s, "^%s*([%x:]-)::([%x:]-)%s*$")
  local ok
  if a then
    ok = groups6(a, head) and groups6(b, tail) and #head + #tail <= 7
  else
    local _, _, whole_text = sfind(s, "^%s*([%x:]+)%s*$")
    ok = whole_text and groups6(whole_text, head) and #head == 8
  end
  if not ok then error("invalid ipv6 addr: " .. tostring(s), 0) end
  g = {}
  for i = 1, #head do g[#g + 1] = head[i] end
  for _ = 1, 8 - #head - #tail do g[#g + 1] = 0 end
  for i = 1, #tail do g[#g + 1] = tail[i] end
  ADDR6[s] = g
  return g
end
local function addr6_set(f, s)
  local g = parse_addr6(s)
  for i = 0, 7 do
    local v = g[i + 1]
    wr(SO[f] + 2 * i, floor(v / 256)); wr(SO[f] + 2 * i + 1, v % 256)
  end
  return true
end

-- tcp:check():set(): the TCP checksum over pseudo-header and segment, whatever was given.
local function tcp_check_set(f)
  local ip = ip_header(f, "set")
  if not ip then error("tcp:check():set() needs a TCP segment reached through ip:data(packet_tcp)", 0) end
  local tcp = SO[f] - 16
  local l4len, pseudo = l4_span(ip, tcp)
  wr(SO[f], 0); wr(SO[f] + 1, 0)
  local c = 0xffff - fold(sum16(tcp, l4len, pseudo + 6 + l4len))
  wr(SO[f], floor(c / 256)); wr(SO[f] + 1, c % 256)
  return true
end

local function nibble(fd)
  local lo, hi, msg = fd.limits[1], fd.limits[2], fd.limits[3]
  if fd.bit_offset % 8 == 0 then return nib_hi_get, nib_set(true, lo, hi, msg) end
  return nib_lo_get, nib_set(false, lo, hi, msg)
end
local KINDS = {
  int = function() return int_get, int_set end,
  nibble = nibble,
  bitfield = bitfield,
  bits = function() return bit_get, bit_set end,
  frag13 = function() return frag_get, frag_set end,
  addr4 = function() return addr_get, addr_set end,
  addr6 = function() return addr6_get, addr6_set end,
  raw = function() return raw_get, raw_set end,
  data = function() return raw_get, setdata end,
  str = function() return str_get, str_set end,
  tcp_check = function() return int_get, tcp_check_set end,
}

-- ---------------------------------------------------------------- locators
-- Where a field lies when that depends on the packet: relative offset and length.
local function ip_ihl(seg)
  if SN[seg] < 1 then error("packet_ip segment is empty", 0) end
  return (B[SO[seg]] % 16) * 4
end
local function tcp_hdr(seg)
  if SN[seg] < 13 then error("TCP header truncated: no data offset byte", 0) end
  local h = floor(B[SO[seg] + 12] / 16) * 4
  if h < 20 or h > SN[seg] then error("TCP data offset " .. h .. " does not fit the " .. SN[seg] .. "-byte segment", 0) end
  return h
end

-- TCP options, found by walking the kind/length list of the options area.
local OPT = { MSS = { 2, 2 }, WS = { 3, 1 }, SACK = { 4, 0 }, TSVAL = { 8, 4 }, TSER = { 8, 4, 4 } }
local function find_opt(seg, name)
  local kind, len, skip = OPT[name][1], OPT[name][2], OPT[name][3] or 0
  local i, stop = SO[seg], SO[seg] + SN[seg]
  while i < stop do
    local k = B[i]
    if k == 0 then break end
    if k == 1 then
      i = i + 1
    else
      if i + 1 >= stop then break end
      local l = B[i + 1]
      if l < 2 or i + l > stop then break end
      if k == kind then
        if len == 0 then return i - SO[seg], 2 end          -- SACK-permitted: the option itself
        return i - SO[seg] + 2 + skip, len
      end
      i = i + l
    end
  end
  error("TCP option " .. name .. " is not present in this packet", 0)
end

-- TFTP (RFC 1350): where the fields are depends on the opcode.
local function tftp_op(seg)
  if SN[seg] < 2 then error("TFTP packet truncated: no opcode", 0) end
  return get16(SO[seg])
end
local function cstring(seg, from)            -- offset and length of a NUL-terminated string
  local i = SO[seg] + from
  local stop = SO[seg] + SN[seg]
  while i < stop and B[i] ~= 0 do i = i + 1 end
  return from, i - (SO[seg] + from)
end
local function rrq_wrq(f) return { [1] = f, [2] = f } end
local TFTP = {
  filename = rrq_wrq(function(seg) return cstring(seg, 2) end),
  mode = rrq_wrq(function(seg)
    local fo, fl = cstring(seg, 2)
    return cstring(seg, math.min(fo + fl + 1, SN[seg]))
  end),
  block_nr = { [3] = function() return 2, 2 end, [4] = function() return 2, 2 end },
  data = { [3] = function(seg) return 4, SN[seg] - 4 end },
}

-- IPv6: the extension headers between the fixed header and the payload.
local function ip6_walk(seg)               -- where the last next-header byte is; payload offset
  if SN[seg] < 40 then error("packet_ip6 header truncated: an IPv6 header is 40 bytes", 0) end
  local at, nh_at, off = SO[seg], 6, 40
  local nh = B[at + 6]
  while IP6_EXT[nh] do
    if off + 2 > SN[seg] then break end
    local r = IP6_EXT[nh]
    local size = r[3] + (B[at + off + 1] + r[2]) * r[1]
    if off + size > SN[seg] then break end
    nh_at, nh, off = off, B[at + off], off + size
  end
  return nh_at, off
end

local LOCATORS = {
  ip_frag_off = function() return function() return 6, 2 end end,   -- the 13 bits after the flags
  ip_data = function() return function(seg)          -- after the options, up to tot_len
    local ihl = ip_ihl(seg)
    local stop = SN[seg]
    if SN[seg] >= 4 then
      local tot = get16(SO[seg] + 2)
      if tot >= ihl and tot < stop then stop = tot end
    end
    return ihl, stop - ihl
  end end,
  tcp_options = function() return function(seg) return 20, tcp_hdr(seg) - 20 end end,
  tcp_data = function() return function(seg) local h = tcp_hdr(seg); return h, SN[seg] - h end end,
  tcp_option = function(name) return function(seg) return find_opt(seg, name) end end,
  tftp = function(name)
    local ops = TFTP[name]
    return function(seg)
      local op = tftp_op(seg)
      local where = ops[op]
      if not where then error("TFTP field '" .. name .. "' is not present in a packet with opcode " .. op, 0) end
      return where(seg)
    end
  end,
  ip6_next_header = function() return function(seg) return (ip6_walk(seg)), 1 end end,
  ip6_data = function() return function(seg)          -- after the extension headers, up to payload_len
    local _, off = ip6_walk(seg)
    local stop, pl = SN[seg], get16(SO[seg] + 4)
    if pl > 0 and 40 + pl < stop then stop = 40 + pl end
    if off > stop then off = stop end
    return off, stop - off
  end end,
}

-- ---------------------------------------------------------------- the table
-- How a protocol finds the next: the selector field's value, looked up in `next`.
local function next_finder(entry, locate)
  if entry.next_any then return function() return true end end
  if not entry.next then return nil end
  local map, sel = entry.next, nil
  for _, fd in ipairs(entry.fields) do if fd.name == entry.next_by then sel = fd end end
  local where = locate[sel.name]
  local o, n = floor(sel.bit_offset / 8), floor((sel.bit_offset % 8 + sel.bit_length + 7) / 8)
  -- fixed one- or two-byte selectors (EtherType, IP protocol): the per-packet fast path
  if not where and n == 1 then
    return function(seg, t) return SN[seg] >= o + 1 and map[B[SO[seg] + o]] == t end
  elseif not where and n == 2 then
    return function(seg, t)
      return SN[seg] >= o + 2 and map[B[SO[seg] + o] * 256 + B[SO[seg] + o + 1]] == t
    end
  end
  return function(seg, t)
    local ro, rl = o, n
    if where then ro, rl = where(seg) end
    if ro + rl > SN[seg] then return false end
    local v = B[SO[seg] + ro]
    if rl == 2 then v = v * 256 + B[SO[seg] + ro + 1] end
    return map[v] == t
  end
end

for _, entry in ipairs(TABLE.protocols) do
  local fields, locate = {}, {}
  for i, fd in ipairs(entry.fields) do
    local get, set = KINDS[fd.kind](fd)
    -- the bytes that hold the field's bits
    local bytes = { floor(fd.bit_offset / 8), floor((fd.bit_offset % 8 + fd.bit_length + 7) / 8) }
    fields[i] = { fd.name, fd.bit_offset, fd.bit_length, get, set, as = fd.as, bytes = bytes }
    if fd.locate then locate[fd.name] = LOCATORS[fd.locate](fd.name) end
  end
  protocol { id = entry.id, name = entry.name, payload = entry.payload, fields = fields,
             locate = locate, has = next_finder(entry, locate),
             ip = entry.name == "packet_ip" or entry.name == "packet_ip6" }
end

-- ---------------------------------------------------------------- dynamic protocols
local next_dynamic = TABLE.first_dynamic    -- the module's dynamic ids: 8..15
local user_env                          -- the script's globals, for callback names

function A.set_env(env) user_env = env end

local function callback(name, what)
  local fn = user_env[name]
  if type(fn) ~= "function" then
    error(what .. " '" .. tostring(name) .. "' is not a global function of the script", 0)
  end
  return fn
end

function A.register_dynamic_protbuf(t)
  if type(t) ~= "table" then error("register_dynamic_protbuf takes a table", 0) end
  local name = t.name
  if type(name) ~= "string" or not sfind(name, "^[%a_][%w_]*$") then
    error("register_dynamic_protbuf: 'name' must be a string usable as a global name", 0)
  end
  if user_env[name] ~= nil or BYNAME[name] then
    error("register_dynamic_protbuf: a global named '" .. name .. "' already exists", 0)
  end
  if type(t.protocol_fields) ~= "table" or #t.protocol_fields == 0 then
    error("register_dynamic_protbuf: 'protocol_fields' must be a list of {name, bit_offset, bit_length, getter, setter}", 0)
  end
  local id = next_dynamic                -- counted here, not in supported_protocols: the script can edit that
  if id > TABLE.max_dynamic then error("register_dynamic_protbuf: no free protocol slot", 0) end
  local fields = {}
  for i, fd in ipairs(t.protocol_fields) do
    local fname, bo, bl, gname, sname = fd[1], fd[2], fd[3], fd[4], fd[5]
    if type(fname) ~= "string" or type(bo) ~= "number" or type(bl) ~= "number" then
      error("register_dynamic_protbuf: field " .. i .. " must be {name, bit_offset, bit_length, getter, setter}", 0)
    end
    -- As in the module, a getter or setter that raises makes get() or set() return false
    -- (a spent budget still ends the packet: guard re-raises it).
    local get, set
    if gname then
      get = function(f)
        local ok, v = guard(pcall(callback(gname, "getter"), ba_view(SO[f], SN[f])))
        if ok then return v end
        return false
      end
    end
    if sname then
      set = function(f, v)
        local ok, r = guard(pcall(callback(sname, "setter"), ba_view(SO[f], SN[f]), v))
        if ok then return r end
        return false
      end
    end
    fields[i] = { fname, bo, bl, get, set }
  end
  local payload, has_name, changes_name = t.payload_field, t.has_protocol, t.get_field_changes
  protocol { id = id, name = name, payload = payload, fields = fields,
    has = function(_, ty, seg)
      if not has_name then
        error("protocol " .. name .. " has no 'has_protocol' function: its payload cannot be converted", 0)
      end
      return callback(has_name, "has_protocol")(seg, ty) and true or false
    end,
    changes = changes_name and function(seg)
      local offs, lens = callback(changes_name, "get_field_changes")(seg)
      if type(offs) ~= "table" or type(lens) ~= "table" or #offs ~= #lens then
        error("get_field_changes must return two tables of the same length (offset and length changes, in bits)", 0)
      end
      return { offs, lens }
    end }
  next_dynamic = id + 1
  user_env[name] = id
  return true
end
