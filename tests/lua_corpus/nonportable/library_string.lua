-- expect: library 5
-- The kernel has no string library.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  print(string.format("to %s", ip:daddr():get()))
  return XT_CONTINUE
end
