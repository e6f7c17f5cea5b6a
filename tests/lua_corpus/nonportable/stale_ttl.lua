-- expect: stale-checksum 6
-- Setting the TTL leaves the IP header checksum stale in the kernel.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  ip:ttl():set(1)
  return XT_CONTINUE
end
