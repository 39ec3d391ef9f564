"""What changed between two runs: image, lock, host, code, seed, outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envlock.engine.docker import Engine
from envlock.image.plan import LOCK_PATH
from envlock.lock import lockfile
from envlock.lock.lockdiff import LockDiff, changed, diff_locks, shown
from envlock.lock.lockfile import Lock
from envlock.paths import LOCK_FILE
from envlock.run.arguments import ImageRef, LockRef, RunRef
from envlock.run.records import RunRecord, RunStore


@dataclass(frozen=True)
class RunDiff:
    """What moved between two runs: the software (image, lock), the hardware, the code, the seed, the outputs."""

    locks: LockDiff
    factors: dict[str, tuple[Any, Any]]  # image, lock, driver, cuda-driver, gpus, commit, dirty, seed, command
    outputs: dict[str, tuple[str | None, str | None]]  # path → (sha256 in A, sha256 in B), differing only
    inputs: dict[str, str] = field(default_factory=dict)  # input file → "changed" | "missing" | "added" in B
    params: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # key → (in A, in B), differing

    def __bool__(self) -> bool:
        return bool(self.locks or self.factors or self.outputs or self.inputs or self.params)

    def lines(self) -> list[str]:
        """Readable lines, one change each."""
        out = [f"{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in self.factors.items()]
        out += self.locks.lines()
        out += [f"input {path}: {how}" for path, how in self.inputs.items()]
        out += [f"param {key}: {_value(a)} -> {_value(b)}" for key, (a, b) in self.params.items()]
        out += [f"output {path}: {_short(a)} -> {_short(b)}" for path, (a, b) in self.outputs.items()]
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "factors": {k: {"old": o, "new": n} for k, (o, n) in self.factors.items()},
            "lock": self.locks.as_dict(),
            "outputs": {k: {"old": o, "new": n} for k, (o, n) in self.outputs.items()},
            "inputs": dict(self.inputs),
            "params": {k: {"old": o, "new": n} for k, (o, n) in self.params.items()},
        }


def _value(value: str | None) -> str:
    return "absent" if value is None else value


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "absent"


def _factors(run: RunRecord) -> dict[str, Any]:
    """What a run ran with, by factor (a part not taken: None)."""
    host, git = run.host, run.git
    return {
        "image": run.image_id,
        "lock": run.lock_hash,
        "driver": host.driver_version if host else None,
        "cuda-driver": host.cuda_driver_version if host else None,
        "gpus": [f"{gpu.name} ({gpu.arch})" for gpu in host.gpus] if host else [],
        "commit": git.commit if git else None,
        "dirty": git.diff_sha256 if git and git.dirty else None,
        "untracked": _untracked(run),
        "inputs": list(run.inputs.paths) if run.inputs else None,
        "seed": run.seed,
        "command": " ".join(run.command),
    }


def _untracked(run: RunRecord) -> str | None:
    """One digest for the untracked files (names, and the copies' sha256 where kept); None: there were none."""
    if not run.git or not run.git.untracked:
        return None
    listed = "".join(f"{run.git.saved.get(name, 'not-saved')}  {name}\n" for name in sorted(run.git.untracked))
    return hashlib.sha256(listed.encode()).hexdigest()[:12]


def diff_runs(a: RunRecord, b: RunRecord, lock_a: Lock, lock_b: Lock) -> RunDiff:
    """Compare two run records and the locks they ran with (inputs file by file)."""
    factors = changed(_factors(a), _factors(b))
    inputs = a.inputs.changes(b.inputs) if a.inputs and b.inputs else {}
    outputs = {
        path: (a.outputs.get(path), b.outputs.get(path))
        for path in sorted(a.outputs.keys() | b.outputs.keys())
        if a.outputs.get(path) != b.outputs.get(path)
    }
    before, after = (dict(run.params.values) if run.params else {} for run in (a, b))
    params = {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }
    return RunDiff(diff_locks(lock_a, lock_b), factors, outputs, inputs, params)


DiffKind = Literal["lock", "run", "image"]
Changes = LockDiff | RunDiff


DiffSide = LockRef | RunRef | ImageRef


def diff_side(side: DiffSide, store: RunStore, engine: Callable[[], Engine]) -> tuple[DiffKind, Lock, RunRecord | None]:
    """One side of `envlock diff`: a lock file, a run of the project, or a local image's lock."""
    if isinstance(side, LockRef):
        return "lock", lockfile.read(side.path), None
    if isinstance(side, RunRef):
        return "run", lockfile.read(store.directory(side.run_id) / LOCK_FILE), side.record
    text = engine().read_file(side.image_id, "/" + LOCK_PATH).decode("utf-8")
    return "image", lockfile.loads(text, Path(f"{side.text}:/{LOCK_PATH}")), None


def diff_any(
    a: DiffSide, b: DiffSide, store: RunStore, engine: Callable[[], Engine]
) -> tuple[DiffKind, DiffKind, Changes]:
    """Compare two locks, runs or images (a run with a lock compares their locks)."""
    (kind_a, lock_a, run_a), (kind_b, lock_b, run_b) = diff_side(a, store, engine), diff_side(b, store, engine)
    changes: Changes = diff_runs(run_a, run_b, lock_a, lock_b) if run_a and run_b else diff_locks(lock_a, lock_b)
    return kind_a, kind_b, changes
