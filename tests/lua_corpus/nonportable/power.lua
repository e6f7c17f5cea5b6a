-- expect: power 5
-- `^` is multiplication in the kernel: 2^16 is 32 there.
function process_packet(p)
  local udp = p:data(packet_eth):data(packet_ip):data(packet_udp)
  if udp and udp:sport():get() >= 2^16 - 1 then return NF_DROP end
  return XT_CONTINUE
end
