"""What changed between two locks: packages, CUDA, driver floor, base, environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envlock.lock.lockfile import Lock


@dataclass(frozen=True)
class TargetDiff:
    """Changes on one platform."""

    platform: str
    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    rehashed: tuple[str, ...] = ()  # same version, other files (a new wheel uploaded, or a tampered index)
    cuda: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.rehashed or self.cuda)


@dataclass(frozen=True)
class LockDiff:
    """Changes between two locks; empty when they lock the same content."""

    targets: tuple[TargetDiff, ...] = ()
    environment: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    platforms_added: tuple[str, ...] = ()
    platforms_removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(any(self.targets) or self.environment or self.platforms_added or self.platforms_removed)

    def lines(self) -> list[str]:
        """Readable lines, one change each."""
        out = [f"{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in self.environment.items()]
        out += [f"platform added: {p}" for p in self.platforms_added]
        out += [f"platform removed: {p}" for p in self.platforms_removed]
        for target in self.targets:
            prefix = f"{target.platform}: "
            out += [f"{prefix}+ {name} {version}" for name, version in target.added.items()]
            out += [f"{prefix}- {name} {version}" for name, version in target.removed.items()]
            out += [f"{prefix}~ {name} {old} -> {new}" for name, (old, new) in target.changed.items()]
            out += [f"{prefix}~ {name} (same version, different files)" for name in target.rehashed]
            out += [f"{prefix}cuda {key}: {shown(old)} -> {shown(new)}" for key, (old, new) in target.cuda.items()]
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "environment": {k: {"old": o, "new": n} for k, (o, n) in self.environment.items()},
            "platforms-added": list(self.platforms_added),
            "platforms-removed": list(self.platforms_removed),
            "targets": {
                t.platform: {
                    "added": t.added,
                    "removed": t.removed,
                    "changed": {k: {"old": o, "new": n} for k, (o, n) in t.changed.items()},
                    "rehashed": list(t.rehashed),
                    "cuda": {k: {"old": o, "new": n} for k, (o, n) in t.cuda.items()},
                }
                for t in self.targets
                if t
            },
        }


# Follow from the targets; reported through them, not on their own.
_DERIVED = ("targets", "source-date-epoch")


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (`base.sha256`), so a change names the field that moved."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shown(value: Any) -> str:
    """A value in a change line as a person writes it (`none`, `[a, b]`, `{name = x}`), never a Python repr."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    old, new = _flat(old), _flat(new)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def diff_locks(old: Lock, new: Lock) -> LockDiff:
    """Compare two locks, platform by platform."""
    old_content, new_content = old.content(), new.content()
    environment = changed(
        {k: v for k, v in old_content.items() if k not in _DERIVED},
        {k: v for k, v in new_content.items() if k not in _DERIVED},
    )
    old_targets = {t.platform: t for t in old.targets}
    new_targets = {t.platform: t for t in new.targets}
    diffs = []
    for platform in sorted(old_targets.keys() & new_targets.keys()):
        before = {p.name: p for p in old_targets[platform].packages}
        after = {p.name: p for p in new_targets[platform].packages}
        diffs.append(
            TargetDiff(
                platform=platform,
                added={n: after[n].version for n in sorted(after.keys() - before.keys())},
                removed={n: before[n].version for n in sorted(before.keys() - after.keys())},
                changed={
                    n: (before[n].version, after[n].version)
                    for n in sorted(before.keys() & after.keys())
                    if before[n].version != after[n].version
                },
                rehashed=tuple(
                    n
                    for n in sorted(before.keys() & after.keys())
                    if before[n].version == after[n].version and before[n] != after[n]
                ),
                cuda=changed(old_targets[platform].cuda.as_dict(), new_targets[platform].cuda.as_dict()),
            )
        )
    return LockDiff(
        targets=tuple(diffs),
        environment=environment,
        platforms_added=tuple(sorted(new_targets.keys() - old_targets.keys())),
        platforms_removed=tuple(sorted(old_targets.keys() - new_targets.keys())),
    )
