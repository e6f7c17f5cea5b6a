-- Refuse TFTP read requests for one file name.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local udp = ip:data(packet_udp)
  if not udp or udp:dport():get() ~= 69 then return XT_CONTINUE end
  local tftp = udp:data(packet_tftp)
  if tftp:opcode():get() == 1 and tftp:filename():get() == "secret.txt" then
    return NF_DROP
  end
  return XT_CONTINUE
end
