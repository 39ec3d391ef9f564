"""A run's declared inputs (data, configs): every file hashed before the command starts, read once thanks to a
stat cache, and compared file by file when the run is reproduced or diffed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from envlock.codecs import PATH_DIGESTS, Codec, declared_path_problem, each, field
from envlock.fsutil import atomic_write_text, read_small_text, resolves_inside

# A file whose mtime/ctime is this close to the moment it was read may still change within the same timestamp
# tick without its stat changing: its hash is used but not cached (git's "racy clean" problem).
RACY_NS = 1_000_000_000
_WORKERS = max(1, min(8, os.cpu_count() or 1))


def links_out_of(project_dir: Path, declared: tuple[str, ...]) -> list[tuple[str, str]]:
    """The project's top-level symbolic links that lead outside it to something that exists (a dataset folder
    linked in), not under a declared input: (name, where it points). The container sees the project alone, so there
    they dangle; a declared input is mounted from where the link leads."""
    covered = {Path(path).parts[0] for path in declared if Path(path).parts}
    try:
        entries = sorted(os.scandir(project_dir), key=lambda e: e.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        link = Path(entry.path)
        # Dangling here too, or a loop (exists() is False for both): nothing the container misses.
        if entry.name in covered or not entry.is_symlink() or not link.exists():
            continue
        if not resolves_inside(project_dir, entry.name):
            with contextlib.suppress(OSError):
                found.append((entry.name, str(link.readlink())))
    return found


class InputSet(Codec):
    """The declared inputs as hashed: path (project-relative) → sha256, plus the declared paths that were absent;
    written with the manifest's digest, which must match the files on read."""

    DERIVED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"digest": lambda inputs: inputs.digest}

    paths: tuple[str, ...] = field(check=each(declared_path_problem))
    files: Mapping[str, str] = field(default_factory=dict, check=PATH_DIGESTS)
    missing: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """One sha256 over the manifest (`sha256sum` format, sorted by path): equal digests, equal inputs."""
        manifest = "".join(f"{digest}  {path}\n" for path, digest in sorted(self.files.items()))
        return hashlib.sha256(manifest.encode()).hexdigest()

    def changes(self, other: InputSet) -> dict[str, str]:
        """What differs in `other`, by path: "changed", "missing" (absent now) or "added"; declared roots too."""
        moved: dict[str, str] = {}
        for path in sorted(self.files.keys() | other.files.keys()):
            before, after = self.files.get(path), other.files.get(path)
            if before == after:
                continue
            moved[path] = "missing" if after is None else "added" if before is None else "changed"
        for root in other.missing:
            if root not in self.missing:
                moved.setdefault(root, "missing")
        return moved


class StatCache:
    """(path, size, mtime_ns, ctime_ns, inode) → sha256, kept in one JSON file; a cache only: any doubt, rehash."""

    def __init__(self, path: Path, racy_ns: int = RACY_NS) -> None:
        self.path = path
        self.racy_ns = racy_ns
        self.entries: dict[str, list[object]] = {}
        self.dirty = False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(read_small_text(path))
            if isinstance(loaded, dict):
                self.entries = loaded

    @staticmethod
    def _key(stat: os.stat_result) -> list[object]:
        return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]

    def get(self, path: str, stat: os.stat_result) -> str | None:
        """The cached sha256 when the file's stat is unchanged."""
        entry = self.entries.get(path)
        if (
            isinstance(entry, list)
            and len(entry) == 5
            and entry[0] == stat.st_size
            and entry[1] == stat.st_mtime_ns
            and entry[2] == stat.st_ctime_ns
            and entry[3] == stat.st_ino
            and isinstance(entry[4], str)
        ):
            return entry[4]
        return None

    def put(self, path: str, stat: os.stat_result, digest: str, read_at_ns: int) -> None:
        """Remember a hash, unless the file was touched too close to when it was read."""
        if max(stat.st_mtime_ns, stat.st_ctime_ns) >= read_at_ns - self.racy_ns:
            return
        self.entries[path] = [*self._key(stat), digest]
        self.dirty = True

    def save(self) -> None:
        """Write the cache back (atomically) when it learned something; a cache that cannot be written is skipped."""
        if self.dirty:
            with contextlib.suppress(OSError):
                atomic_write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
            self.dirty = False


def _files(base: str, declared: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, absolute path, stat) of every regular file of one declared input: the file itself, or every
    file under the directory (symlinks to files followed, to directories not). Strings, not Paths: a warm pass over
    a dataset of many small files is mostly this loop."""
    top = str(Path(base) / declared.rstrip("/"))
    if Path(top).is_file():
        yield declared.rstrip("/"), top, Path(top).stat()
        return
    skip = len(base) + 1
    stack = [top]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    yield entry.path[skip:], entry.path, entry.stat()


def _sha256(path: str) -> tuple[str, int]:
    read_at = time.time_ns()
    with open(path, "rb") as handle:  # noqa: PTH123  (a str path, as _files yields)
        return hashlib.file_digest(handle, "sha256").hexdigest(), read_at


def hash_inputs(base: Path, paths: tuple[str, ...], cache: StatCache | None = None) -> InputSet:
    """Hash every file of the declared inputs under `base` (threads: hashlib hashes without the GIL); files whose
    stat the cache knows are not read. Paths in the result are relative to `base`, POSIX style."""
    root = str(base.resolve())
    found: list[tuple[str, str, os.stat_result]] = []
    missing: list[str] = []
    for declared in paths:
        if not (Path(root) / declared).exists():
            missing.append(declared)
            continue
        found += _files(root, declared)
    digests: dict[str, str] = {}
    todo: list[tuple[str, str, os.stat_result]] = []
    for name, file, stat in found:
        known = cache.get(file, stat) if cache else None
        if known is None:
            todo.append((name, file, stat))
        else:
            digests[name] = known
    if todo:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415  (start-up time: a run without inputs)

        with ThreadPoolExecutor(_WORKERS) as pool:
            for (name, file, stat), (digest, read_at) in zip(
                todo, pool.map(lambda item: _sha256(item[1]), todo), strict=True
            ):
                digests[name] = digest
                if cache:
                    cache.put(file, stat, digest, read_at)
    if cache:
        cache.save()
    return InputSet(tuple(paths), dict(sorted(digests.items())), tuple(missing))
