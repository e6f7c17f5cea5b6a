-- expect: not-in-xt-lua 6
-- expect: not-in-xt-lua 7
-- IPv6 is the lab's own: the kernel module has no packet_ip6 or packet_icmp6.
function process_packet(p)
  local eth = p:data(packet_eth)
  local ip6 = eth:data(packet_ip6)
  if ip6 and ip6:data(packet_icmp6) then return NF_DROP end
  return XT_CONTINUE
end
