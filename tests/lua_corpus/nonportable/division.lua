-- expect: division 7
-- `/` truncates toward zero in the kernel.
total, n = 0, 0
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  total, n = total + ip:tot_len():get(), n + 1
  local average = total / n
  if ip:tot_len():get() > 2 * average then return NF_DROP end
  return XT_CONTINUE
end
