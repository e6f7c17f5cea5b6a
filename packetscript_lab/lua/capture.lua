-- The native replay driver (LuaJIT only): reads a pcap or pcapng file through a window
-- mapped into memory, hands its packets to the engine in batches (E.run_frames, judged in
-- place) and writes the passing ones to a pcap file with pwrite, so no packet becomes a
-- Python object. Memory stays bounded: one mapped window and one batch at a time.
--
-- The caller (judge_child.py) keeps the position: run() takes the byte offset to read
-- from and the offset to write at, and returns where both end, so a fresh process can go
-- on where a killed one stopped. Anything unusual in the file (a cut record, an undeclared
-- interface, a block this driver does not read) ends a batch with a reason; the Python
-- reader then names the exact problem.
--
-- The facts come from Python (core/pcap.py, core/results.py) as configuration: cfg.eth and
-- cfg.eth6 the synthetic Ethernet headers for IPv4 and IPv6, cfg.link_types the link-type
-- table (code -> {kind = "ethernet"|"raw"|"cooked", header, proto_at}), cfg.max_record
-- libpcap's largest packet, cfg.max_header the longest link header, cfg.format the pcap and
-- pcapng numbers, cfg.verdict the verdict bits of a result code.
local E, cfg = ...
local ffi = require("ffi")
local bit = require("bit")

pcall(ffi.cdef, [[
int open(const char *, int, ...);
int close(int);
void *mmap(void *, size_t, int, int, int, int64_t);
int munmap(void *, size_t);
int madvise(void *, size_t, int);
int64_t lseek(int, int64_t, int);
int64_t pwrite(int, const void *, size_t, int64_t);
void *malloc(size_t);
void free(void *);
]])
pcall(ffi.cdef, "void *memmove(void *, const void *, size_t);")
local C = ffi.C
local u8p, u16p, u32p = ffi.typeof("const uint8_t *"), ffi.typeof("const uint16_t *"), ffi.typeof("const uint32_t *")
local MAP_FAILED = ffi.cast("void *", -1)

local MAX_RECORD = cfg.max_record
-- The file formats' numbers (core/pcap.py): pcap magics; pcapng block types, the byte-order
-- magic and the option codes read here.
local F = cfg.format
local MAGIC_US, MAGIC_NS, SHB, IDB, EPB, SPB, OPB, BOM, OPT_END, OPT_TSRESOL =
      F.magic_us, F.magic_ns, F.shb, F.idb, F.epb, F.spb, F.opb, F.bom, F.opt_end, F.opt_tsresol
local VERDICT = cfg.verdict
local WINDOW = 32 * 1024 * 1024    -- bytes of the file mapped at a time (open() may change it)
local PAGE = 4096
local WORK = 8 * 1024 * 1024       -- bytes of frames per batch at most
local MAXN = 16384                 -- packets per batch at most

local M = {}
local fd, outfd, size = -1, -1, 0
local map, map_off, map_len = nil, 0, 0
local format, nano = nil, false     -- "pcap" or "pcapng"; pcap's ns timestamps
local linktype, frame_kind, cooked_hdr, proto_at = nil, nil, 0, 0
local ifaces = {}                   -- pcapng: {linktype, units per second} per interface

-- Buffers from malloc, not from the Lua heap: they must not count against max_memory.
local function alloc(ct, n, size)
  local p = C.malloc(n * size)
  if p == nil then error("out of memory for the replay buffers") end
  return ffi.gc(ffi.cast(ct, p), C.free)
end
local BIG = WORK + MAX_RECORD + 64
local work = alloc("uint8_t *", BIG, 1)
local outb = alloc("uint8_t *", BIG + 16 * MAXN, 1)
local L = alloc("int32_t *", MAXN, 4)
local T = alloc("double *", MAXN, 8)
local SEC = alloc("uint32_t *", MAXN, 4)
local USEC = alloc("uint32_t *", MAXN, 4)
local MAXHDR = cfg.max_header                  -- the longest cooked header in the table
local HDR = alloc("uint8_t *", MAXHDR * MAXN, 1)   -- cooked headers, put back on output
local R = alloc("uint8_t *", MAXN, 1)
local ETH, ETH6 = ffi.new("uint8_t[14]"), ffi.new("uint8_t[14]")
ffi.copy(ETH, cfg.eth, 14)
ffi.copy(ETH6, cfg.eth6, 14)

local function unmap()
  if map ~= nil then C.munmap(ffi.cast("void *", map), map_len); map = nil end
end

-- A pointer to `need` bytes of the file at `off`, or nil when the file ends before.
local function view(off, need)
  if off + need > size then return nil end
  if map == nil or off < map_off or off + need > map_off + map_len then
    unmap()
    local start = off - off % PAGE
    local len = math.max(WINDOW, off + need - start)
    if start + len > size then len = size - start end
    local p = C.mmap(nil, len, 1, 2, fd, start)      -- PROT_READ, MAP_PRIVATE
    if p == MAP_FAILED then error("cannot map the capture into memory (mmap failed)") end
    C.madvise(p, len, 2)                             -- MADV_SEQUENTIAL
    map, map_off, map_len = ffi.cast(u8p, p), start, len
  end
  return map + (off - map_off)
end

local function u32(p, at) return ffi.cast(u32p, p + at)[0] end
local function u16(p, at) return ffi.cast(u16p, p + at)[0] end

-- pcapng: an Interface Description Block's link type and timestamp units per second.
local function read_idb(p, blen)
  local lt, resol = u16(p, 8), 1e6
  local at = 16
  while at + 4 <= blen - 4 do
    local code, olen = u16(p, at), u16(p, at + 2)
    if code == OPT_END then break end
    if code == OPT_TSRESOL and olen >= 1 then
      local v = p[at + 4]
      resol = bit.band(v, 0x80) ~= 0 and 2 ^ bit.band(v, 0x7f) or 10 ^ v
      if resol > 2 ^ 63 then resol = 2 ^ 63 end
    end
    at = at + 4 + olen + (4 - olen % 4) % 4
  end
  return lt, ffi.cast("uint64_t", resol)
end

-- pcapng: read the section and interface blocks from `from` up to `to` (a restart mid-file).
local function scan_blocks(from, to)
  local off = from
  while off < to do
    local p = view(off, 12)
    if not p then return "cut block" end
    local btype, blen = u32(p, 0), u32(p, 4)
    if blen < 12 or blen % 4 ~= 0 then return "bad block length" end
    p = view(off, blen)
    if not p then return "cut block" end
    if btype == SHB then ifaces = {}
    elseif btype == IDB then ifaces[#ifaces] = nil; ifaces[#ifaces + 1] = { read_idb(p, blen) } end
    off = off + blen
  end
end

-- Opens the capture (and the output, a pcap file the caller created with its header).
-- Returns link type and the offset of the first record, or nil and why the fast path
-- does not read this file (then the Python reader does, and names any problem).
function M.open(path, out_path, resume_at, window)
  M.close()
  if window then WINDOW = math.max(PAGE, window - window % PAGE) end
  fd = C.open(path, 0)
  if fd < 0 then return nil, "cannot open" end
  size = tonumber(C.lseek(fd, 0, 2))
  local p = view(0, 24)
  if not p then return nil, "too short" end
  local magic, start = u32(p, 0), 0
  if magic == MAGIC_US or magic == MAGIC_NS then
    format, nano, linktype, start = "pcap", magic == MAGIC_NS, u32(p, 20), 24
  elseif magic == SHB and u32(p, 8) == BOM then
    format, start = "pcapng", 0
    -- The link type of the first interface (before the first packet) names the output's.
    local off = 0
    ifaces = {}
    while not linktype do
      local q = view(off, 12)
      if not q then return nil, "no interface" end
      local btype, blen = u32(q, 0), u32(q, 4)
      if blen < 12 or blen % 4 ~= 0 or not view(off, blen) then return nil, "bad block" end
      if btype == IDB then linktype = read_idb(view(off, blen), blen)
      elseif btype == EPB or btype == SPB or btype == OPB then return nil, "packet before interface" end
      off = off + blen
    end
    ifaces = {}
  else
    return nil, "not a little-endian pcap or pcapng file"
  end
  local lt = cfg.link_types[linktype]
  if not lt then return nil, "link type " .. tostring(linktype) end
  frame_kind, cooked_hdr, proto_at = lt.kind, lt.header, lt.proto_at
  if format == "pcapng" and resume_at and resume_at > 0 then
    local why = scan_blocks(0, resume_at)
    if why then return nil, why end
  end
  if out_path then
    outfd = C.open(out_path, 1)                      -- O_WRONLY
    if outfd < 0 then return nil, "cannot open the output" end
  end
  return linktype, start
end

function M.close()
  unmap()
  if fd >= 0 then C.close(fd); fd = -1 end
  if outfd >= 0 then C.close(outfd); outfd = -1 end
  linktype, format = nil, nil
end

-- Puts record i (captured bytes at p, caplen) into the work buffer as an Ethernet frame.
-- An Ethernet capture's frames go there as output records, each after its 16-byte pcap
-- record header (`gap`), so the judged batch is written out as it lies.
local function frame_in(i, p, caplen, wpos, sec, usec)
  if frame_kind == "ethernet" then
    local rec = ffi.cast("uint32_t *", work + wpos)
    rec[0], rec[1], rec[2], rec[3] = sec, usec, caplen, caplen
    ffi.copy(work + wpos + 16, p, caplen)
    return caplen
  elseif frame_kind == "raw" then
    ffi.copy(work + wpos, bit.rshift(p[0], 4) == 6 and ETH6 or ETH, 14)
    ffi.copy(work + wpos + 14, p, caplen)
    return caplen + 14
  end
  local hdr = cooked_hdr
  if caplen < hdr then return nil end
  ffi.copy(HDR + MAXHDR * i, p, hdr)
  ffi.copy(work + wpos, ETH, 12)
  ffi.copy(work + wpos + 12, p + proto_at, 2)
  ffi.copy(work + wpos + 14, p + hdr, caplen - hdr)
  return caplen - hdr + 14
end

-- The next record at `off`: pointer to its bytes, caplen, seconds, microseconds, ms as a
-- double, the offset after it; nil at the end of the file; false and why for a record
-- that is not a packet.
local function next_pcap(off)
  if off >= size then return nil end
  local p = view(off, 16)
  if not p then return false, "cut record header" end
  local sec, frac, caplen, wirelen = u32(p, 0), u32(p, 4), u32(p, 8), u32(p, 12)
  if caplen > MAX_RECORD then return false, "record too long" end
  if caplen == 0 then return false, "empty record" end
  local d = view(off + 16, caplen)
  if not d then return false, "cut record" end
  local usec, ms
  if nano then
    usec = math.floor(frac / 1000 + 0.5)
    ms = sec * 1000 + frac / 1e6
    if usec >= 1000000 then sec, usec = sec + 1, usec - 1000000 end
  else
    usec, ms = frac, sec * 1000 + frac / 1000
  end
  return d, caplen, sec, usec, ms, off + 16 + caplen
end

local function next_pcapng(off)
  while true do
    if off >= size then return nil end
    local p = view(off, 12)
    if not p then return false, "cut block" end
    local btype, blen = u32(p, 0), u32(p, 4)
    if blen < 12 or blen % 4 ~= 0 then return false, "bad block length" end
    p = view(off, blen)
    if not p then return false, "cut block" end
    if btype == EPB then
      local iface = ifaces[u32(p, 8) + 1]
      if not iface then return false, "undeclared interface" end
      if iface[1] ~= linktype then return false, "mixed link types" end
      local caplen = u32(p, 20)
      if caplen == 0 then return false, "empty packet" end
      if caplen > MAX_RECORD or 28 + caplen > blen then return false, "bad packet length" end
      -- 64-bit ticks: a double would lose the nanoseconds of today's times.
      local ticks = ffi.cast("uint64_t", u32(p, 12)) * 4294967296ULL + u32(p, 16)
      local units = iface[2]
      local whole = ticks / units
      local part = tonumber(ticks - whole * units)
      local sec = tonumber(whole)
      local ms = sec * 1000 + part * 1000 / tonumber(units)
      local usec = math.floor(part * 1e6 / tonumber(units) + 0.5)
      if usec >= 1000000 then sec, usec = sec + 1, usec - 1000000 end
      return p + 28, caplen, sec, usec, ms, off + blen
    elseif btype == SHB then
      if u32(p, 8) ~= BOM then return false, "big-endian section" end
      ifaces = {}
    elseif btype == IDB then
      ifaces[#ifaces + 1] = { read_idb(p, blen) }
    elseif btype == OPB or btype == SPB then
      return false, "obsolete or simple packet block"
    end
    off = off + blen
  end
end

local function write_out(buf, size, at)
  local done = 0
  while done < size do
    local k = tonumber(C.pwrite(outfd, buf + done, size - done, at + done))
    if k <= 0 then error("cannot write the output file (pwrite failed)") end
    done = done + k
  end
  return at + size
end

-- Judges (forced < 0) or gives the code `forced` to up to maxn packets from byte offset
-- `off`, writing the passing ones at `out_off`. Returns the next offset, the packets
-- done, the next output offset, their codes (one byte each), the errors (run_batch's
-- records), printed lines waiting, and why reading stopped early (nil: end or maxn).
function M.run(off, maxn, out_off, forced)
  local nxt = format == "pcap" and next_pcap or next_pcapng
  if maxn > MAXN then maxn = MAXN end
  local gap = frame_kind == "ethernet" and 16 or 0
  local n, wpos, stop = 0, 0, nil
  while n < maxn and wpos < WORK do
    local d, caplen, sec, usec, ms, after = nxt(off)
    if d == nil then break end
    if d == false then stop = caplen; break end
    local flen = frame_in(n, d, caplen, wpos, sec, usec)
    if not flen then stop = "cooked header cut"; break end
    L[n], T[n], SEC[n], USEC[n] = flen, ms, sec, usec
    wpos = wpos + gap + flen
    off = after
    n = n + 1
  end
  local errs, nout = "", 0
  if n > 0 then
    if forced < 0 then
      errs, nout = E.run_frames(work, L, T, n, R, gap)
    else
      ffi.fill(R, n, forced)
    end
  end
  if outfd >= 0 and n > 0 and gap > 0 then
    -- The records that pass, moved together where some do not, then written at once.
    local o, w = 0, 0
    for i = 0, n - 1 do
      local size = 16 + L[i]
      if bit.band(R[i], VERDICT) ~= 0 then
        if o ~= w then C.memmove(work + o, work + w, size) end
        o = o + size
      end
      w = w + size
    end
    out_off = write_out(work, o, out_off)
  elseif outfd >= 0 and n > 0 then
    -- Raw IP and cooked captures: the synthetic Ethernet header off, the cooked one back on.
    local o, w = 0, 0
    local hdr, kind = cooked_hdr, frame_kind
    for i = 0, n - 1 do
      local flen = L[i]
      if bit.band(R[i], VERDICT) ~= 0 then
        local rec = ffi.cast("uint32_t *", outb + o)
        local plen
        if kind == "raw" then
          plen = flen - 14
          ffi.copy(outb + o + 16, work + w + 14, plen)
        else
          plen = hdr + flen - 14
          ffi.copy(outb + o + 16, HDR + MAXHDR * i, hdr)
          ffi.copy(outb + o + 16 + hdr, work + w + 14, flen - 14)
        end
        rec[0], rec[1], rec[2], rec[3] = SEC[i], USEC[i], plen, plen
        o = o + 16 + plen
      end
      w = w + flen
    end
    out_off = write_out(outb, o, out_off)
  end
  return off, n, out_off, ffi.string(R, n), errs, nout, stop
end

return M
