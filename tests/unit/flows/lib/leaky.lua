-- leaky.lua — assigns a global at load: refused.
oops = true
return {}
