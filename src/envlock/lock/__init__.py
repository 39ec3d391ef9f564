"""Stage 1: from pyproject.toml to envlock.lock (spec, resolvers, CUDA, the lock file, base recipes)."""
