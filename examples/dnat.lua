-- dnat.lua: the destination-NAT example from PacketScript's documentation, on lab addresses:
-- whatever it sees goes to the lab's server, 10.77.2.2.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_DROP end
  ip:daddr():set("10.77.2.2")
  return XT_CONTINUE
end
