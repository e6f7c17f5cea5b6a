-- expect: field-kept 9
-- expect: stale-checksum 9
-- Inside the loop, the kept field runs after other accesses from the previous round.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local tos = ip:tos()
  for i = 1, 2 do
    tos:set(i)
    if ip:protocol():get() == 6 then break end
  end
  return XT_CONTINUE
end
