"""Tasks: what to compute for each kind of problem (classification first)."""
