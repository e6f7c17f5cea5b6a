-- expect: stale-checksum 7
-- Rewriting a UDP port leaves the UDP checksum stale (nothing recomputes it).
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local udp = ip and ip:data(packet_udp)
  if udp and udp:dport():get() == 5353 then
    udp:dport():set(53)
  end
  return XT_CONTINUE
end
