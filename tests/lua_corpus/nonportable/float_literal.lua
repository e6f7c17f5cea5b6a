-- expect: float-literal 3
-- Numbers are integers in the kernel; 0.5 does not even compile there.
local sample_rate = 0.5
function process_packet(p)
  if nf.get_random() % 100 < sample_rate * 100 then return NF_DROP end
  return XT_CONTINUE
end
