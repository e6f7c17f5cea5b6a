-- The native NFQUEUE worker (LuaJIT only): reads queued packets from the queue's netlink
-- socket many per system call (recvmmsg), judges a batch in one call (E.run_frames) and
-- sends all its verdicts in one message buffer, a run of unchanged accepts as one
-- NFQNL_MSG_VERDICT_BATCH. No packet becomes a Python object.
--
-- The socket is bound and configured by the lab process, which keeps it across restarts
-- of this process; so is the shared page (`shm`, layout in lab/nfqnative.py), where this
-- driver leaves its counters and the batch in progress: the packet ids, marks and one
-- result byte per packet (0xFF until judged). The watchdog in the lab process reads it to
-- see progress, and after killing this process it gives the batch's unjudged packets
-- their verdicts itself.
local E, R = ...                     -- the engine, and the result code's flags (core/results.py)
local VERDICT_BITS, FAILED, ETH_CHANGED, BODY_CHANGED = R.verdict, R.failed, R.eth_changed, R.body_changed
local ffi = require("ffi")
local bit = require("bit")
local band, bor, bswap, rshift = bit.band, bit.bor, bit.bswap, bit.rshift

pcall(ffi.cdef, [[
void *mmap(void *, size_t, int, int, int, int64_t);
int munmap(void *, size_t);
void *malloc(size_t);
void free(void *);
]])
pcall(ffi.cdef, [[
struct nfq_iovec { void *base; size_t len; };
struct nfq_msghdr { void *name; uint32_t namelen; struct nfq_iovec *iov; size_t iovlen;
                    void *control; size_t controllen; int flags; };
struct nfq_mmsghdr { struct nfq_msghdr hdr; unsigned int len; };
struct nfq_pollfd { int fd; short events; short revents; };
struct nfq_timespec { long sec; long nsec; };
int recvmmsg(int, struct nfq_mmsghdr *, unsigned int, int, struct nfq_timespec *);
int poll(struct nfq_pollfd *, unsigned long, int);
struct nfq_timeval { long sec; long usec; };
int setsockopt(int, int, int, const void *, uint32_t);
int64_t send(int, const void *, size_t, int);
int clock_gettime(int, struct nfq_timespec *);
struct nfq_shm {
  uint64_t seq; uint32_t state; uint32_t n; uint32_t stop; uint32_t continue_accepts;
  uint64_t c[10]; double first_t; double last_t; uint32_t pid; uint32_t pad;
};
struct nfq_rec { uint32_t seq, n, total, after; double t; };
struct nfq_err { uint32_t seq, len; };
]])
local C = ffi.C
local u8p = ffi.typeof("uint8_t *")
local u16p, u32p = ffi.typeof("uint16_t *"), ffi.typeof("uint32_t *")

local MAXB = 64                      -- packets per batch (and per recvmmsg) at most
local HEAD = 256                     -- room for the netlink and attribute headers
local IDS, MARKS, RESULTS = 192, 192 + 4 * MAXB, 192 + 8 * MAXB   -- offsets in the page
local SHM_SIZE = 4096
-- counters: seen, bytes, accepted, dropped, continued, modified, errors, eth_modified,
-- internal_errors, batches
local SEEN, BYTES, ACC, DROP, CONT, MOD, ERR, ETHMOD, BATCHES = 0, 1, 2, 3, 4, 5, 6, 7, 9

local function alloc(ct, n)
  local p = C.malloc(n)
  if p == nil then error("out of memory for the queue's buffers") end
  return ffi.gc(ffi.cast(ct, p), C.free)
end

local M = {}
local seq = 0                                -- batches judged (the shared page's seq)
local sock, shm, ids, marks, results = -1, nil, nil, nil, nil
local queue_num, mark_bit, use_outdev, RING = 0, 0, false, 200
local RANGE, SLOT, rx, msgs, iov, work, orig, L, T, ETHS, tx, TXSIZE
local ETH_DEFAULT = ffi.new("uint8_t[12]")
-- The per-packet code below reads and writes FFI memory only by indexing with numbers:
-- where it is not compiled, a cast or a pointer sum would make a new cdata object each time.
local ts32 = ffi.new("int32_t[4]")                            -- a struct timespec, read as int32s
local tsp = ffi.cast("struct nfq_timespec *", ts32)
local function now(clock)
  C.clock_gettime(clock, tsp)
  return ts32[0] + ts32[2] * 1e-9
end
local tx32, tx16, mlen32, MSTRIDE, MLEN_AT, QBE
local totals = {}                                             -- the shared counters, as numbers

-- sock_fd: the bound queue's socket; shm_fd: the shared page; eths: 16-byte records
-- (ifindex as uint32 and the 12 MAC bytes) of the synthetic Ethernet headers.
function M.setup(sock_fd, shm_fd, qnum, bit_, outdev, copy_range, ring, eths, default12)
  sock, queue_num, mark_bit, use_outdev, RING = sock_fd, qnum, bit_, outdev, ring
  local p = C.mmap(nil, SHM_SIZE, 3, 1, shm_fd, 0)          -- PROT_READ|WRITE, MAP_SHARED
  if p == ffi.cast("void *", -1) then return nil, "cannot map the queue's shared page" end
  shm = ffi.cast("struct nfq_shm *", p)
  ids, marks = ffi.cast(u32p, ffi.cast(u8p, p) + IDS), ffi.cast(u32p, ffi.cast(u8p, p) + MARKS)
  results = ffi.cast(u8p, p) + RESULTS
  RANGE = copy_range
  SLOT = band(RANGE + HEAD + 7, -8)
  rx = alloc(u8p, SLOT * MAXB)
  msgs = ffi.new("struct nfq_mmsghdr[?]", MAXB)
  iov = ffi.new("struct nfq_iovec[?]", MAXB)
  for i = 0, MAXB - 1 do
    iov[i].base, iov[i].len = rx + i * SLOT, SLOT
    msgs[i].hdr.iov, msgs[i].hdr.iovlen = iov + i, 1
  end
  work = alloc(u8p, (RANGE + 14) * MAXB)
  orig = alloc(u8p, (RANGE + 14) * MAXB)
  L = alloc("int32_t *", 4 * MAXB)
  T = alloc("double *", 8 * MAXB)
  TXSIZE = MAXB * (RANGE + 64) + 64
  tx = alloc(u8p, TXSIZE)
  tx32, tx16 = ffi.cast(u32p, tx), ffi.cast(u16p, tx)
  mlen32 = ffi.cast(u32p, msgs)
  MSTRIDE = ffi.sizeof("struct nfq_mmsghdr") / 4
  MLEN_AT = ffi.offsetof("struct nfq_mmsghdr", "len") / 4
  QBE = bor(rshift(queue_num, 8), band(queue_num, 0xff) * 256)   -- res_id, big-endian
  for k = 0, 9 do totals[k] = tonumber(shm.c[k]) end
  ETHS = {}
  for at = 1, #eths, 16 do
    local idx = ffi.cast("const uint32_t *", ffi.cast("const char *", eths) + at - 1)[0]
    ETHS[idx] = ffi.new("uint8_t[12]")
    ffi.copy(ETHS[idx], ffi.cast("const char *", eths) + at + 3, 12)
  end
  ffi.copy(ETH_DEFAULT, default12, 12)
  seq = tonumber(shm.seq)
  return true
end

-- Copies each queued packet into the batch as a frame (synthetic Ethernet header + IP
-- packet); returns the number of packets and the bytes of frames.
local function parse(count)
  local n, off = 0, 0
  for m = 0, count - 1 do
    local base, len = m * SLOT, mlen32[m * MSTRIDE + MLEN_AT]
    local at = 0
    while at + 16 <= len do
      local p = base + at
      local mlen = rx[p] + rx[p + 1] * 256 + rx[p + 2] * 65536 + rx[p + 3] * 16777216
      local mtype = rx[p + 4] + rx[p + 5] * 256
      if mlen < 16 or at + mlen > len then break end
      if mtype == 0x300 then                                  -- NFQNL_MSG_PACKET
        local id, mark, ifindex, payload, plen = nil, 0, 0, nil, 0
        local a, stop = p + 20, p + mlen
        while a + 4 <= stop do
          local alen, atype = rx[a] + rx[a + 1] * 256, band(rx[a + 2] + rx[a + 3] * 256, 0x3fff)
          if alen < 4 then break end
          local v = ((rx[a + 4] * 256 + rx[a + 5]) * 256 + rx[a + 6]) * 256 + rx[a + 7]
          if atype == 1 then id = v                                          -- PACKET_HDR
          elseif atype == 3 then mark = v                                    -- MARK
          elseif atype == 5 and not use_outdev then ifindex = v              -- INDEV
          elseif atype == 6 and use_outdev then ifindex = v                  -- OUTDEV
          elseif atype == 10 then payload, plen = a + 4, alen - 4            -- PAYLOAD
          end
          a = a + band(alen + 3, -4)
        end
        if id and n < MAXB then
          ffi.copy(work + off, ETHS[ifindex] or ETH_DEFAULT, 12)
          -- the EtherType follows the IP version of the packet
          if plen > 0 and rshift(rx[payload], 4) == 6 then work[off + 12], work[off + 13] = 0x86, 0xdd
          else work[off + 12], work[off + 13] = 0x08, 0x00 end
          if plen > 0 then ffi.copy(work + off + 14, rx + payload, plen) end
          ids[n], marks[n], L[n] = id, mark, plen + 14
          n, off = n + 1, off + plen + 14
        end
      end
      at = at + band(mlen + 3, -4)
    end
  end
  ffi.copy(orig, work, off)
  return n, off
end

-- Verdict messages into tx: a run of unchanged accepts becomes one batch verdict for the
-- run's last id (the kernel applies it to every queued id up to it; everything before the
-- run already had its verdict earlier in the same buffer).
local NLM_F_REQUEST = 1
local function header(at, size, mtype)                       -- at: a multiple of 4
  local w, h = at / 4, at / 2
  tx32[w], tx16[h + 2], tx16[h + 3], tx32[w + 2], tx32[w + 3] = size, mtype, NLM_F_REQUEST, 0, 0
  tx[at + 16], tx[at + 17], tx16[h + 9] = 0, 0, QBE          -- AF_UNSPEC, version 0, queue
end
local VERDICT, BATCH = 0x301, 0x303           -- NFQNL_MSG_VERDICT(_BATCH) of subsystem 3
local function verdict_msg(at, mtype, verdict, id, mark, payload, plen)
  local w, size = at / 4, 32
  tx32[w + 5], tx32[w + 6], tx32[w + 7] = 0x0002000c, bswap(verdict), bswap(id)  -- NFQA_VERDICT_HDR
  if mark then
    tx32[w + 8], tx32[w + 9], size = 0x00030008, bswap(mark), 40                  -- NFQA_MARK
  end
  if payload then
    tx32[(at + size) / 4] = (plen + 4) + 10 * 65536                                 -- NFQA_PAYLOAD
    ffi.copy(tx + at + size + 4, payload, plen)
    size = size + band(plen + 7, -4)
  end
  header(at, size, mtype)
  return at + size
end

local function send_verdicts(n)
  local at, run_last = 0, nil
  local cont_accepts = shm.continue_accepts ~= 0
  local off = 0
  for i = 0, n - 1 do
    local code, len = results[i], L[i]
    local v = band(code, VERDICT_BITS)
    local changed = band(code, BODY_CHANGED) ~= 0
    local accept = v == 1 or (v == 2 and cont_accepts)
    if accept and not changed then
      run_last = ids[i]
    else
      if run_last then at = verdict_msg(at, BATCH, 1, run_last); run_last = nil end
      local payload = changed and work + off + 14 or nil
      if accept then at = verdict_msg(at, VERDICT, 1, ids[i], nil, payload, len - 14)
      elseif v == 0 then at = verdict_msg(at, VERDICT, 0, ids[i], nil, payload, len - 14)
      else at = verdict_msg(at, VERDICT, 4, ids[i], bor(marks[i], mark_bit), payload, len - 14) end  -- NF_REPEAT
    end
    off = off + len
  end
  if run_last then at = verdict_msg(at, BATCH, 1, run_last) end
  local sent = C.send(sock, tx, at, 0)
  if sent < 0 then return ffi.errno() end
end

local function count(n, bytes)
  local c, t = shm.c, totals
  local acc, drop, cont, mod, err, ethmod = 0, 0, 0, 0, 0, 0
  for i = 0, n - 1 do
    local code = results[i]
    local v = band(code, VERDICT_BITS)
    if v == 1 then acc = acc + 1 elseif v == 0 then drop = drop + 1 else cont = cont + 1 end
    if band(code, BODY_CHANGED) ~= 0 then mod = mod + 1 end
    if band(code, FAILED) ~= 0 then err = err + 1 end
    if band(code, ETH_CHANGED) ~= 0 then ethmod = ethmod + 1 end
  end
  t[SEEN], t[BYTES] = t[SEEN] + n, t[BYTES] + (bytes - 14 * n)
  t[ACC], t[DROP], t[CONT] = t[ACC] + acc, t[DROP] + drop, t[CONT] + cont
  t[MOD], t[ERR], t[ETHMOD], t[BATCHES] = t[MOD] + mod, t[ERR] + err, t[ETHMOD] + ethmod, t[BATCHES] + 1
  for k = 0, 9 do c[k] = t[k] end
end

-- What the lab process gets at the next return: the latest batches (at most RING
-- packets) and every batch's errors.
local recs, rec_packets, errs, nerr_bytes = {}, 0, {}, 0
local rec = ffi.new("struct nfq_rec")
local errh = ffi.new("struct nfq_err")
local function record(seq, n, total, t, any_changed, e)
  rec.seq, rec.n, rec.total, rec.after, rec.t = seq, n, total, any_changed and 1 or 0, t
  recs[#recs + 1] = { n, ffi.string(rec, 24) .. ffi.string(L, 4 * n) .. ffi.string(results, n)
                        .. ffi.string(orig, total) .. (any_changed and ffi.string(work, total) or "") }
  rec_packets = rec_packets + n
  while rec_packets - recs[1][1] >= RING do
    rec_packets = rec_packets - recs[1][1]
    table.remove(recs, 1)
  end
  if e ~= "" and nerr_bytes < 256 * 1024 then
    errh.seq, errh.len = seq, #e
    errs[#errs + 1] = ffi.string(errh, 8) .. e
    nerr_bytes = nerr_bytes + #e
  end
end

local function take()
  local r, e, count = {}, table.concat(errs), rec_packets
  for i = 1, #recs do r[i] = recs[i][2] end
  recs, rec_packets, errs, nerr_bytes = {}, 0, {}, 0
  return table.concat(r), e, count
end

-- One blocking recvmmsg per wake-up (MSG_WAITFORONE: then whatever else is there), with
-- the socket's receive timeout as the longest wait.
local tv, timeout_set = ffi.new("struct nfq_timeval"), -1
local function set_timeout(seconds)
  if seconds == timeout_set then return end
  timeout_set = seconds
  tv.sec, tv.usec = math.floor(seconds), (seconds % 1) * 1e6
  C.setsockopt(sock, 1, 20, tv, ffi.sizeof(tv))              -- SOL_SOCKET, SO_RCVTIMEO
end

-- Judges until there is something to report: returns status ("report" or "stop"), the
-- records, the errors, the printed lines waiting, a socket error (errno) or 0 and the
-- number of packets in the records.
-- Returns at least every `idle` seconds (to see the stop flag), and within `lag` seconds
-- of a batch (the lab shows recent packets) but not sooner than `gap` seconds after the
-- last return: under load, a report then carries many batches and costs the same.
function M.run(idle, lag, gap)
  local last_report = now(1)
  local dirty, nout, sockerr = false, 0, 0
  local dirty_since = 0
  while true do
    if shm.stop ~= 0 then
      local r, e, k = take()
      return "stop", r, e, nout, sockerr, k
    end
    local t = now(1)
    -- A report waits `lag` after the batch it is for: its work then does not compete with
    -- the packets the verdicts just released.
    local wait = dirty and math.max(dirty_since + lag, last_report + gap) - t or last_report + idle - t
    if wait <= 0 or sockerr ~= 0 then
      local r, e, k = take()
      return "report", r, e, nout, sockerr, k
    end
    do
      set_timeout(dirty and lag or idle)
      local got = C.recvmmsg(sock, msgs, MAXB, 0x10000, nil)  -- MSG_WAITFORONE
      if got < 0 then
        local en = ffi.errno()
        if en ~= 11 and en ~= 4 then sockerr = en end          -- EAGAIN, EINTR
      elseif got > 0 then
        local n, total = parse(got)
        if n > 0 then
          local mono = now(1)
          for i = 0, n - 1 do T[i] = mono * 1000 end
          ffi.fill(results, n, 0xff)
          seq = seq + 1
          shm.n, shm.seq, shm.state = n, seq, 1
          local e, lines = E.run_frames(work, L, T, n, results)
          nout = lines
          local wall = now(0)
          if shm.first_t == 0 then shm.first_t = wall end
          shm.last_t = wall
          count(n, total)
          shm.state = 2                                       -- counted; verdicts go out
          local any = false
          for i = 0, n - 1 do if band(results[i], BODY_CHANGED) ~= 0 then any = true; break end end
          local err = send_verdicts(n)
          shm.state = 0
          if err then sockerr = err end
          record(seq, n, total, wall, any, e)
          if not dirty then dirty, dirty_since = true, mono end
        end
      end
    end
  end
end

return M
