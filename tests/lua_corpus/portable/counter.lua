-- Count packets per IP protocol in globals (they persist between packets) and log every
-- thousandth packet as one line.
counts = {}
total = 0

function process_packet(p)
  local ip = p:data(packet_eth):data(packet_ip)
  if not ip then return XT_CONTINUE end
  local proto = ip:protocol():get()
  counts[proto] = (counts[proto] or 0) + 1
  total = total + 1
  if total % 1000 == 0 then
    print("state " .. tostring(STATE_ID) .. ": " .. tostring(total) .. " packets, tcp "
          .. tostring(counts[6] or 0))
  end
  return XT_CONTINUE
end
