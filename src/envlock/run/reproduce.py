"""Re-verify a recorded result: same image, same code, same seed; compare the outputs and name what moved."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envlock.errors import RerunError, UsageError
from envlock.lock import lockfile
from envlock.run.diff import RunDiff, diff_runs
from envlock.run.records import RunRecord, RunStore
from envlock.run.runner import RunRequest

Status = Literal["identical", "within tolerance", "differs", "missing"]


@dataclass(frozen=True)
class OutputCheck:
    """One declared output compared with the original run's."""

    path: str
    status: Status
    details: tuple[str, ...] = ()  # the keys/cells that moved, with by how much


@dataclass(frozen=True)
class Tolerance:
    """How far numbers in metrics files may move and still count as reproduced."""

    rtol: float = 0.0
    atol: float = 0.0

    def close(self, a: float, b: float) -> bool:
        """math.isclose with these tolerances (NaN equals NaN here: a NaN metric reproduced is reproduced)."""
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=self.rtol, abs_tol=self.atol)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_leaves(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _compare_values(before: dict[str, Any], after: dict[str, Any], tolerance: Tolerance) -> tuple[bool, list[str]]:
    """(all within tolerance, what moved) for two flat mappings."""
    moved: list[str] = []
    exact = True
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        exact = False
        x, y = _number(a), _number(b)
        if x is not None and y is not None:
            if not tolerance.close(x, y):
                moved.append(f"{key}: {a} -> {b} (by {y - x:+.6g})")
        else:
            moved.append(f"{key}: {a!r} -> {b!r}")
    return exact or not moved, moved


def _table(path: Path) -> dict[str, Any]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return {f"row {r} col {c}": cell for r, row in enumerate(rows) for c, cell in enumerate(row)}


def compare_output(
    path: str, hashes: tuple[str | None, str | None], before: Path | None, after: Path, tolerance: Tolerance
) -> OutputCheck:
    """Bit-identical, or (JSON/CSV with a saved copy) equal within the tolerance, or which values moved."""
    before_hash, after_hash = hashes
    if after_hash is None:
        return OutputCheck(path, "missing", ("the new run did not produce it",))
    if before_hash == after_hash:
        return OutputCheck(path, "identical")
    if before is None or not before.is_file():
        return OutputCheck(path, "differs", (f"sha256 {str(before_hash)[:12]} -> {after_hash[:12]}",))
    try:
        if after.suffix.lower() == ".json":
            old = _leaves(json.loads(before.read_text(encoding="utf-8")))
            new = _leaves(json.loads(after.read_text(encoding="utf-8")))
        else:
            old, new = _table(before), _table(after)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        return OutputCheck(path, "differs", (f"cannot compare as data: {exc}",))
    within, moved = _compare_values(old, new, tolerance)
    return OutputCheck(path, "within tolerance" if within else "differs", tuple(moved))


@contextlib.contextmanager
def code_at(project_dir: Path, record: RunRecord, store: RunStore) -> Iterator[Path]:
    """The recorded code in a separate directory: a git worktree at the commit, with the recorded diff applied."""
    commit = record.git.commit if record.git else None
    with tempfile.TemporaryDirectory(prefix="envlock-reproduce-") as tmp:
        work = Path(tmp) / "code"
        if commit is None:
            # Not a git repository when recorded: the project as it is now is the best there is.
            shutil.copytree(project_dir, work, ignore=shutil.ignore_patterns(".envlock", ".git"))
            yield work
            return

        def git(*args: str, cwd: Path = project_dir) -> None:
            done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RerunError(
                    f"git {args[0]} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}",
                    hint=f"is commit {commit[:12]} still in this repository?",
                )

        top = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        inside = project_dir.resolve().relative_to(Path(top).resolve()) if top else Path()
        git("worktree", "add", "--detach", str(work), commit)
        try:
            patch = store.directory(record.run_id) / "diff.patch"
            if record.git and record.git.dirty and patch.is_file():
                git("apply", "--binary", str(patch), cwd=work)  # git diff paths are relative to the repository
            yield work / inside
        finally:
            subprocess.run(["git", "-C", str(project_dir), "worktree", "remove", "--force", str(work)],
                           capture_output=True, check=False)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """Reproduced or not, and why: every output compared, every factor that moved between the two runs."""

    original: RunRecord
    new: RunRecord
    outputs: tuple[OutputCheck, ...]
    changes: RunDiff

    @property
    def reproduced(self) -> bool:
        """Same exit code, and every output identical or within tolerance."""
        fine = all(check.status in ("identical", "within tolerance") for check in self.outputs)
        return fine and self.new.exit_code == self.original.exit_code

    def lines(self) -> list[str]:
        """The verdict as text."""
        head = "REPRODUCED" if self.reproduced else "NOT REPRODUCED"
        lines = [f"{head}: run {self.new.run_id} re-ran {self.original.run_id}"]
        if self.new.exit_code != self.original.exit_code:
            lines.append(f"  exit code: {self.original.exit_code} -> {self.new.exit_code}")
        for check in self.outputs:
            lines.append(f"  output {check.path}: {check.status}")
            lines += [f"    {detail}" for detail in check.details]
        moved = [line for line in self.changes.lines() if not line.startswith("output ")]
        lines += [f"  changed: {line}" for line in moved] or ["  changed: nothing (same image, lock, host, code, seed)"]
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready verdict."""
        return {
            "reproduced": self.reproduced,
            "original": self.original.run_id,
            "new": self.new.run_id,
            "outputs": [{"path": c.path, "status": c.status, "details": list(c.details)} for c in self.outputs],
            "changes": self.changes.as_dict(),
        }


def reproduce_run(
    original: RunRecord,
    store: RunStore,
    project_dir: Path,
    rerun: Callable[[Path], RunRecord],
    tolerance: Tolerance,
) -> Verdict:
    """Run `rerun` on the recorded code and compare its outputs and circumstances with the original's."""
    with code_at(project_dir, original, store) as code:
        new = rerun(code)
        checks = tuple(
            compare_output(
                path,
                (digest, new.outputs.get(path)),
                store.saved_output(original.run_id, path),
                code / path,
                tolerance,
            )
            for path, digest in sorted(original.outputs.items())
        )
    lock_before = lockfile.read(store.directory(original.run_id) / "envlock.lock")
    lock_after = lockfile.read(store.directory(new.run_id) / "envlock.lock")
    return Verdict(original, new, checks, diff_runs(original, new, lock_before, lock_after))


def rerun_request(original: RunRecord, force: bool) -> RunRequest:
    """What reproduce runs again: the original's command, seed, outputs and passed variable names; a multi-node
    run is refused (one container here would wait for nodes that never come)."""
    nodes = original.environment.get("ENVLOCK_NNODES", "1")
    if nodes != "1":
        raise UsageError(
            f"run {original.run_id} ran on {nodes} nodes: reproduce re-runs a command in one container, here",
            hint=f"submit it again (envlock submit --slurm -N {nodes} -- {' '.join(original.command)}), then compare: "
            f"envlock diff {original.run_id} NEW_RUN",
        )
    outputs = tuple(original.outputs) or (original.scheduler.request.outputs if original.scheduler else ())
    return RunRequest(
        original.command, original.seed, force, None, outputs, tuple(original.passed_env), original.run_id
    )
