-- expect: lua51-syntax 5
-- expect: lua51-syntax 6
-- The kernel runs Lua 5.1.
function process_packet(p)
  local half = 10 // 3
  if half & 1 == 1 then return NF_DROP end
  return XT_CONTINUE
end
