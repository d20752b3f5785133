-- parked_tika.lua — the tika step of ai_record as it parks under flow_bench:
-- lua-flows/lib/tika.lua's PUT to a Tika that never answers (test_flow_park.c).
local tika = require "tika"

return flow {
  start = "tika",
  steps = {
    tika = {
      run = function(ctx, file)
        local txt, source_or_err = tika.extract(file)
        if not txt then
          return nil, source_or_err
        end
        return true
      end,
      timeout = 7200,
    },
  },
}
