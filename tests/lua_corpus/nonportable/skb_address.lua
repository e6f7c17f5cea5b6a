-- expect: skb-address 6
-- Passing skb makes the address setter patch the L4 checksum through a wild pointer.
function process_packet(p, skb)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  ip:saddr():set("10.77.0.1", skb)
  return XT_CONTINUE
end
