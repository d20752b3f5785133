local l = require "leaky"
return flow { start = "a", steps = { a = { run = function() return true end } } }
