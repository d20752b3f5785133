return flow {
  start = "a",
  steps = {
    a = { run = function() return true end },

    b = {
      run = function() return true end,
    },
  },
}
