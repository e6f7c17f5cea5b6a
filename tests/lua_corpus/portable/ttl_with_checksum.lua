-- Raise a low TTL to 64 and write the IP header checksum, which the kernel does not fix.
local function header_checksum(hdr)
  local sum = 0
  for i = 0, 19, 2 do
    if i ~= 10 then sum = sum + hdr[i] * 256 + hdr[i + 1] end
  end
  while sum > 65535 do sum = sum - 65535 end   -- one's-complement fold, no division needed
  return 65535 - sum
end

function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  if ip:ttl():get() < 10 then
    ip:ttl():set(64)
    ip:check():set(header_checksum(p:raw(14, 20):to_bytes()))
  end
  return XT_CONTINUE
end
