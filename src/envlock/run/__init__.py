"""Stage 3: runs (host probe, preflight, git state, records, runner, tracking, reproduce, run diff)."""
