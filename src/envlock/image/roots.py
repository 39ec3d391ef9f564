"""gc roots, as Nix keeps them: every project that locks, builds or runs with a cache registers itself there
(`roots/<sha256 of the project's path>`, a small file written temp-then-rename), so that `envlock gc` run by any
user of a shared cache keeps what every live project needs, and frees what projects whose folder is gone needed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from envlock.fsutil import atomic_write_text, read_json
from envlock.paths import CacheLayout, ProjectLayout

_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Root:
    """A registered project: where it is, the image names it used, and who registered it."""

    file: Path
    project: Path
    repositories: tuple[str, ...]
    owner: str

    @property
    def live(self) -> bool:
        """The project's folder still exists (even when this user cannot read it)."""
        try:
            return self.project.is_dir()
        except OSError:
            return True  # cannot even look: never taken for dead

    @property
    def readable(self) -> bool:
        """This user can read what the project needs (its lock and run records)."""
        return os.access(self.project, os.R_OK | os.X_OK) and all(
            os.access(p, os.R_OK | os.X_OK)
            for p in (ProjectLayout(self.project).state, ProjectLayout(self.project).runs)
            if p.exists()
        )


def root_file(cache: CacheLayout, project_dir: Path) -> Path:
    """The root file of a project in a cache."""
    return cache.roots / hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()


def read_root(path: Path) -> Root | None:
    """A root file, or None when it is not one (damaged, or not named as roots are)."""
    data = read_json(path)
    if not _NAME.fullmatch(path.name) or not isinstance(data, dict) or not isinstance(data.get("project"), str):
        return None
    names = data.get("repositories")
    repositories = tuple(str(n) for n in names) if isinstance(names, list) else ()
    try:
        owner = str(path.stat().st_uid)
    except OSError:
        return None
    return Root(path, Path(data["project"]), repositories, owner)


def register_root(cache: CacheLayout, project_dir: Path, repository: str | None = None) -> Path | None:
    """Register the project in the cache (once; again only when it names a new image repository). None when the
    cache cannot be written (a user who only reads a shared cache: nothing of theirs is in it to keep)."""
    path = root_file(cache, project_dir)
    known = read_root(path)
    repositories = set(known.repositories if known else ()) | ({repository} if repository else set())
    if known is not None and set(known.repositories) == repositories:
        return path
    record = {"project": str(project_dir.resolve()), "repositories": sorted(repositories)}
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError:
        return None
    return path


def read_roots(cache: CacheLayout) -> list[Root]:
    """Every root registered in the cache (files that are not roots are left alone)."""
    if not cache.roots.is_dir():
        return []
    return [root for path in sorted(cache.roots.iterdir()) if (root := read_root(path)) is not None]


def remove_root(root: Root) -> None:
    """Forget a dead root (another user's may not be removable: it is then reported again next time)."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        root.file.unlink()
