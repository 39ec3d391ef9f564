"""What changed between two locks: packages, CUDA, driver floor, base, environment, the image's layer order.

Every field the lock hash covers is reported when it moves (tests/unit/test_lockdiff.py changes each in turn):
two locks with different hashes never diff as "no differences".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envlock.lock.lockfile import Lock, TargetLock


@dataclass(frozen=True)
class TargetDiff:
    """Changes on one platform."""

    platform: str
    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    rehashed: tuple[str, ...] = ()  # same version, other files (a new wheel uploaded, or a tampered index)
    cuda: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # The platform's other fields (`python-platform`, `base.id`, `base.debian.NAME`), dotted.
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # Layout 3's `layers` lists (None: stability order), when they differ.
    layers: tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.added or self.removed or self.changed or self.rehashed or self.cuda or self.fields or self.layers
        )

    def layer_line(self) -> str | None:
        """The layer order's change in one line: from which layer up the image differs, or how the order is given."""
        if self.layers is None:
            return None
        old, new = self.layers
        if old is None or new is None:
            given = ("in stability order", f"listed ({len(new or ())} layers)")
            return f"layer order: {given[old is not None]} -> {given[new is not None]}"
        first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
        was = old[first] if first < len(old) else "nothing"
        now = new[first] if first < len(new) else "nothing"
        moved = "" if sorted(old) != sorted(new) else ", the same layers"
        return f"layer order: from layer {first + 1} of {len(new)} up (was {was}, now {now}{moved})"


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
            out += [f"{prefix}{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in target.fields.items()]
            layer_line = target.layer_line()
            out += [f"{prefix}{layer_line}"] if layer_line else []
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
                    "fields": {k: {"old": o, "new": n} for k, (o, n) in t.fields.items()},
                    "layers": {"old": _listed(t.layers[0]), "new": _listed(t.layers[1])} if t.layers else None,
                }
                for t in self.targets
                if t
            },
        }


def _listed(layers: tuple[str, ...] | None) -> list[str] | None:
    return None if layers is None else list(layers)


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


def _target_fields(old: TargetLock, new: TargetLock) -> dict[str, tuple[Any, Any]]:
    """A platform's Python platform and base: dotted, one line per Debian package; a base only one side has (not
    built where that lock was made) is one line, not one per package."""
    if (old.base is None) != (new.base is None):
        sides = [f"{b.id} ({len(b.debian)} Debian packages)" if b else None for b in (old.base, new.base)]
        base = {"base": (sides[0], sides[1])}
    else:
        base = changed(
            {"base": old.base.as_dict() if old.base else {}}, {"base": new.base.as_dict() if new.base else {}}
        )
    return {**changed({"python-platform": old.python_platform}, {"python-platform": new.python_platform}), **base}


def _layers(
    old: tuple[str, ...] | None, new: tuple[str, ...] | None
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None] | None:
    return None if old == new else (old, new)


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
                fields=_target_fields(old_targets[platform], new_targets[platform]),
                layers=_layers(old_targets[platform].layers, new_targets[platform].layers),
            )
        )
    return LockDiff(
        targets=tuple(diffs),
        environment=environment,
        platforms_added=tuple(sorted(new_targets.keys() - old_targets.keys())),
        platforms_removed=tuple(sorted(old_targets.keys() - new_targets.keys())),
    )
