return flow {
  start = "a",
  steps = {
    a = {
      run = function() return true end,
      fallback = "ocrr",
    },
  },
}
