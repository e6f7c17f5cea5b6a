-- expect: string-method 6
-- Strings have no methods in the kernel.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  local dst = ip:daddr():get()
  if dst:sub(1, 3) == "10." then return NF_DROP end
  return XT_CONTINUE
end
