-- expect: library 6
-- expect: library 7
-- expect: library 8
seen = {}
function process_packet(p)
  table.insert(seen, nf.get_time())
  local n = math.max(#seen, 10)
  if os.time() > n then return NF_DROP end
  return XT_CONTINUE
end
