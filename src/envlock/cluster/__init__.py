"""Stage 4: the same run on a cluster (Slurm submit, Kubernetes export)."""
