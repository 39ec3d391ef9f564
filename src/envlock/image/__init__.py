"""Stage 2: from a lock to an image (wheels, staging, layers, plan, base store, build, registry, archive/restore)."""
