-- expect: stale-checksum 8
-- The DNAT example from the PacketScript overview: only the IP checksum is fixed, the
-- TCP/UDP checksum over the pseudo-header is not (no skb passed).
function process_packet(p)
  local eth = p:data(packet_eth)
  local ip = eth:data(packet_ip)
  if not ip then return NF_DROP end
  ip:daddr():set("10.77.2.2")
  return XT_CONTINUE
end
