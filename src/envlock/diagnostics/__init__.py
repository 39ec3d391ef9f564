"""Checks of a host, outside the pipeline: they may use its stages, and no stage uses them (`gpucheck`: a GPU host
checked without Docker, run by scripts/gpu-check.sh)."""
