-- helper.lua — a lib module for basic.lua (loaded with require, same sandbox).
local M = {}
function M.greet(name) return "hi " .. name end
return M
