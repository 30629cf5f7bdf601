-- wrk script for the control plane's play route: each request asks for one of 1,000 streams, in a
-- region cycling over eu us ap sa af (see docs/BENCHMARKS.md, "Control plane: route decisions").
-- wrk -t1 -c32 -d20s --latency -s loadtest/route_play.lua http://127.0.0.1:8000/
local regions = {"eu", "us", "ap", "sa", "af"}
local counter = 0
request = function()
  counter = counter + 1
  local stream = (counter * 7919) % 1000
  local region = regions[(counter % #regions) + 1]
  return wrk.format("GET", "/v1/route/play?stream=live/s" .. stream .. "&region=" .. region)
end
