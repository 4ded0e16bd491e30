"""The Redis edge: the key layout, the Lua scripts, and every read and write of the store."""
