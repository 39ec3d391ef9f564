"""envlock: lock, build, run and reproduce ML training environments."""

__version__ = "0.1.0"
