"""`make demo`: the whole callward pipeline on a local store."""
