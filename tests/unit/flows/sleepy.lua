-- sleepy.lua — one step that naps; the 1000-steps test runs it concurrently.
return flow {
  start = "nap",
  steps = {
    nap = { run = function(ctx) sl.sleep(0.05) ctx.done = true return true end },
  },
}
