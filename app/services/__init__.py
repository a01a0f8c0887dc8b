"""Domain functions over a session: keyword-only, one concept per module, no HTTP."""
