"""Content-addressed copies of files a run saw (its untracked code), shared between runs and verified on read."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from envlock.fsutil import atomic_write_bytes

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ObjectStore:
    """Files by the sha256 of their bytes, under `root/sha256/ab/<hex>`; written atomically, never rewritten."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        """Where an object lives; the digest is checked first (it may come from an edited record)."""
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"{digest!r} is not a sha256 digest")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store bytes (a no-op when present) and return their sha256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.is_file():
            atomic_write_bytes(target, data, mode=0o444)
        return digest

    def get(self, digest: str) -> bytes | None:
        """The bytes of an object, or None when it is absent or no longer hashes to its name (damaged)."""
        try:
            data = self.path(digest).read_bytes()
        except (OSError, ValueError):
            return None
        return data if hashlib.sha256(data).hexdigest() == digest else None
