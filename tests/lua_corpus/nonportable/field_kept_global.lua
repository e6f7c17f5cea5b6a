-- expect: field-kept 10
-- A field object kept in a global points into an earlier packet.
last_id = nil
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  if last_id == nil then
    last_id = ip:id()
  end
  if last_id:get() == 0 then return NF_DROP end
  return XT_CONTINUE
end
