-- Drop UDP datagrams to port 9000, let everything else go on through the chain.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local udp = ip:data(packet_udp)
  if udp and udp:dport():get() == 9000 then
    return NF_DROP
  end
  return XT_CONTINUE
end
