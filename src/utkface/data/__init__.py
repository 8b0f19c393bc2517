"""Data: scan a collection, read its labels, split it by hash and cache it (imports the runtime)."""
