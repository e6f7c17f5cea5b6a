-- A stateful filter on the router's FORWARD chain: hosts in 10.77.1.0/24 (inside) may open
-- TCP connections outwards; from outside only the packets of those connections come back.
conns = {}
function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip or ip:protocol():get() ~= 6 then return NF_DROP end
  local tcp = ip:data(packet_tcp)
  local src, dst = ip:saddr():get(), ip:daddr():get()
  local inside = src:sub(1, 8) == "10.77.1."
  if inside then
    conns[src .. ":" .. tcp:sport():get() .. ">" .. dst .. ":" .. tcp:dport():get()] = true
    return NF_ACCEPT
  end
  if conns[dst .. ":" .. tcp:dport():get() .. ">" .. src .. ":" .. tcp:sport():get()] then
    return NF_ACCEPT
  end
  return NF_DROP
end
