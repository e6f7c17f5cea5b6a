-- expect: field-kept 8
-- A field object read after another field was touched reads the other field's way.
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local ttl = ip:ttl()
  local dst = ip:daddr():get()
  if dst == "10.77.0.2" and ttl:get() < 5 then return NF_DROP end
  return XT_CONTINUE
end
