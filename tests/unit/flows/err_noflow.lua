return { start = "a", steps = {} }
