-- expect: entry-missing 3
-- A local entry point is invisible to the rule: the kernel drops every packet.
local function process_packet(p)
  return XT_CONTINUE
end
