-- no start
return flow {
  steps = {
    a = { run = function() return true end },
  },
}
