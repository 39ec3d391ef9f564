"""The lock as a PEP 751 pylock.toml, for installers."""

from __future__ import annotations

from envlock.lock.lockfile import Lock
from envlock.lock.pylock import dump_pylock
from envlock.lock.resolve import LockedPackage
from envlock.lock.targets import environment_marker


def to_pylock(lock: Lock, platforms: list[str] | None = None) -> str:
    """One pylock.toml for the chosen platforms: packages shared by all of them carry no marker."""
    targets = [lock.target(p) for p in platforms] if platforms else list(lock.targets)
    markers: dict[str, str] = {t.platform: environment_marker(t.platform, lock.python) for t in targets}
    seen: dict[LockedPackage, list[str]] = {}
    for target in targets:
        for package in target.packages:
            seen.setdefault(package, []).append(target.platform)
    entries: list[tuple[LockedPackage, str | None]] = []
    for package, where in sorted(seen.items(), key=lambda item: (item[0].name, item[1])):
        if len(where) == len(targets):
            entries.append((package, None))
        else:
            entries.append((package, " or ".join(f"({markers[p]})" for p in where)))
    return dump_pylock(
        entries,
        requires_python=f"=={lock.python}.*",
        environments=[markers[t.platform] for t in targets],
        created_by="envlock",
    )
