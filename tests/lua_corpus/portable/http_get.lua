-- Drop HTTP GET requests: no string library in the kernel, so compare bytes one by one.
local GET = {71, 69, 84, 32}   -- "GET "

local function starts_with(bytes, prefix)
  if #bytes < #prefix then return false end
  for i = 1, #prefix do
    if bytes[i - 1] ~= prefix[i] then return false end
  end
  return true
end

function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local tcp = ip:data(packet_tcp)
  if not tcp or tcp:dport():get() ~= 80 then return XT_CONTINUE end
  local payload = tcp:data():to_bytes()
  if starts_with(payload, GET) then return NF_DROP end
  return XT_CONTINUE
end
