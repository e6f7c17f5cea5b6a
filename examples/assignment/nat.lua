-- Destination NAT on the router's mangle PREROUTING: UDP to the public service address
-- 10.77.2.100 port 9000 goes to the real server, 10.77.2.2 port 9000; all else untouched.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  if ip:daddr():get() == "10.77.2.100" and ip:protocol():get() == 17 then
    local udp = ip:data(packet_udp)
    if udp:dport():get() == 9000 then ip:daddr():set("10.77.2.2") end
  end
  return XT_CONTINUE
end
