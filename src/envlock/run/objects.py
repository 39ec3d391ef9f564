"""Content-addressed copies of files a run saw (its untracked code), shared between runs and verified on read."""

from __future__ import annotations

import contextlib
import hashlib
import re
import stat
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

    def put(self, data: bytes, readable: int = 0o444) -> str:
        """Store bytes and return their sha256. The object is read-only and no more readable than `readable` (the
        source file's mode): a 0640 source gives 0440. The same bytes already stored more widely are narrowed to
        what both sources allow, never widened: whoever could read the wider copy could read its source too, but
        the narrower source says that its owner wants those bytes kept closer from now on."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        mode = 0o400 | (0o444 & readable)  # its owner (who wrote it) always reads it back
        try:
            present = target.lstat()
        except FileNotFoundError:
            atomic_write_bytes(target, data, mode=mode)
            return digest
        if stat.S_ISREG(present.st_mode) and stat.S_IMODE(present.st_mode) & ~mode:
            with contextlib.suppress(PermissionError):  # another user's object in a shared project: left as it is
                target.chmod(stat.S_IMODE(present.st_mode) & mode)
        elif not stat.S_ISREG(present.st_mode):
            atomic_write_bytes(target, data, mode=mode)  # something else took the name: replaced by the object
        return digest

    def get(self, digest: str) -> bytes | None:
        """The bytes of an object, or None when it is absent or no longer hashes to its name (damaged)."""
        try:
            data = self.path(digest).read_bytes()
        except (OSError, ValueError):
            return None
        return data if hashlib.sha256(data).hexdigest() == digest else None
