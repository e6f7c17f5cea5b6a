-- A token bucket on the server's INPUT: at most 10 packets a second from each source,
-- bursts of up to 5 more.
RATE, BURST = 10, 5
buckets = {}
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_ACCEPT end
  local now, src = nf.get_time(), ip:saddr():get()
  local b = buckets[src]
  if not b then b = {tokens = BURST, t = now}; buckets[src] = b end
  b.tokens = math.min(BURST, b.tokens + (now - b.t) * RATE / 1000)
  b.t = now
  if b.tokens >= 1 then b.tokens = b.tokens - 1; return NF_ACCEPT end
  return NF_DROP
end
