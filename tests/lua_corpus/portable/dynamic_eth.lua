-- One dynamic protocol: Ethernet defined in Lua, read-only (getters only).
function eth_dyn_has_protocol(seg, proto)
  return proto == packet_ip
end

function eth_dyn_type(bytes)
  return bytes[0] * 256 + bytes[1]
end

register_dynamic_protbuf({
  name = "packet_eth_dyn",
  payload_field = "data",
  has_protocol = "eth_dyn_has_protocol",
  protocol_fields = {
    {"dmac", 0, 48, nil, nil},
    {"smac", 48, 48, nil, nil},
    {"type", 96, 16, "eth_dyn_type", nil},
    {"data", 112, 0, nil, nil},
  },
})

function process_packet(p)
  local eth = p:data(packet_eth_dyn)
  if eth:type():get() ~= 2048 then return NF_DROP end
  return XT_CONTINUE
end
