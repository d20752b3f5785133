return flow {
  start = "a",
  steps = {
    a = { run = function() return true end, next = "b" },
    b = {
      run = 42,
    },
  },
}
