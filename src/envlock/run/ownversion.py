"""The version of the commit that runs, for the project's own packages versioned by VCS (setuptools-scm & co.).

Their version is no lock input (it moves with every commit, the lock's own commit included), so the image holds no
dist-info for them: each run asks the build backend (once per git HEAD and tags, cached) and mounts the dist-info
of that version read-only on LOCAL_METADATA. The record names the versions; a reproduction writes the same dist-info
from them, and never runs the (possibly foreign) project's backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from envlock.errors import SpecError
from envlock.fsutil import mark_used, published_folder
from envlock.image.staging import write_dist_info
from envlock.lock.backend import MetadataSource
from envlock.lock.localpackages import LocalPackage
from envlock.lock.lockfile import Lock


def current_versions(packages: tuple[LocalPackage, ...], project_dir: Path, backend: MetadataSource) -> dict[str, str]:
    """Each package versioned by VCS → the version its backend gives the code now (`packages`: the spec's)."""
    return {p.name: backend.version(project_dir / p.directory) for p in packages if p.version_from == "vcs"}


def _pinned(lock: Lock, versions: Mapping[str, str]) -> list[LocalPackage]:
    """The lock's VCS-versioned packages at `versions` (a package without a version here is refused: its metadata
    would be absent)."""
    packages = [p for p in lock.local_packages if p.version_from == "vcs"]
    missing = [p.name for p in packages if p.name not in versions]
    if missing:
        raise SpecError(
            f"no version for {', '.join(missing)} (its version comes from VCS and was not taken for this run)",
            hint="run it with `envlock run` in the project, which asks its build backend",
        )
    try:
        return [p.at_version(versions[p.name]) for p in packages]
    except ValueError as exc:
        raise SpecError(f"the build backend gave an unusable {exc}") from exc


def _key(pinned: list[LocalPackage]) -> str:
    return hashlib.sha256(json.dumps([[p.as_dict(), p.version] for p in pinned], sort_keys=True).encode()).hexdigest()


def metadata_key(lock: Lock, versions: Mapping[str, str]) -> str | None:
    """The name of the folder of dist-infos for the lock's VCS-versioned packages at `versions` (None: the lock has
    none): what gc keeps for a run record."""
    pinned = _pinned(lock, versions)
    return _key(pinned) if pinned else None


def metadata_folder(lock: Lock, versions: Mapping[str, str], root: Path) -> Path | None:
    """The folder of dist-infos for the lock's VCS-versioned packages at `versions`, made once per content under
    `root` (None: the lock has none). Touched when used again: gc's grace period spares it until the run's record
    names it."""
    pinned = _pinned(lock, versions)
    if not pinned:
        return None
    final = root / _key(pinned)
    if final.is_dir():
        mark_used(final)
        return final
    with published_folder(final, prefix=".local-metadata-") as work:  # made meanwhile by another run: same bytes
        for package in pinned:
            write_dist_info(package, work)
        work.chmod(0o755)
    return final
