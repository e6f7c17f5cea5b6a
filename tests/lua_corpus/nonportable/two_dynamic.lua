-- expect: dynamic-protocols 11
-- Only one dynamic protocol fits into the module.
function any_proto(seg, t) return true end
register_dynamic_protbuf({
  name = "packet_foo",
  has_protocol = "any_proto",
  protocol_fields = {
    {"kind", 0, 8, nil, nil},
  },
})
register_dynamic_protbuf({
  name = "packet_bar",
  has_protocol = "any_proto",
  protocol_fields = {
    {"kind", 0, 8, nil, nil},
  },
})
function process_packet(p) return XT_CONTINUE end
