"""Scripts in PacketScript's style shared by the documentation, benchmarks and tests."""

_DNAT = """\
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return NF_DROP end
  ip:daddr():set("%s")
  return XT_CONTINUE
end
"""


def dnat(address: str = "10.77.2.2") -> str:
    """The destination-NAT example of PacketScript's documentation (dnat.lua): every IP
    packet is sent to ``address`` (by default the router lab's server), anything else is
    dropped, and the chain goes on (XT_CONTINUE)."""
    return _DNAT % address
