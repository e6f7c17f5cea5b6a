-- expect: dynamic-protocol-bug 8
-- Dynamic setters get a byte array with an uninitialised offset: the write crashes.
function kind_set(bytes, v) bytes[0] = v end
register_dynamic_protbuf({
  name = "packet_foo",
  has_protocol = "any_proto",
  protocol_fields = {
    {"kind", 0, 8, nil, "kind_set"},
  },
})
function any_proto(seg, t) return true end
function process_packet(p) return XT_CONTINUE end
