"""Re-verify a recorded result: same image, code (untracked files too), inputs, seed; compare what the two runs
produced and name what moved. A verdict claims only what was compared (see Verdict.outcome)."""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envlock.codecs import project_path_problem, strict_json
from envlock.errors import (
    FAILURE_REPRODUCED,
    NOT_REPRODUCED,
    NOTHING_COMPARED,
    BundleError,
    RerunError,
    UsageError,
)
from envlock.fsutil import resolves_inside, sha256_file, write_confined
from envlock.git import GIT_OF, Origin, apply_patch, detached_worktree, toplevel
from envlock.lock import lockfile
from envlock.paths import DIFF_FILE, LOCK_FILE, LOG_FILE, STATE_DIR, ProjectLayout
from envlock.run.objects import ObjectStore
from envlock.run.records import RunRecord, RunStore
from envlock.run.rundiff import RunDiff, diff_runs
from envlock.run.runner import RunEvidence, RunRequest

# "not produced": neither run produced it (a failed run): nothing was compared. "missing": only the original did.
OutputStatus = Literal["identical", "within tolerance", "differs", "missing", "not produced"]
Outcome = Literal["REPRODUCED", "NOT REPRODUCED", "NOTHING COMPARED", "FAILURE REPRODUCED"]
EXIT_OF: dict[Outcome, int] = {
    "REPRODUCED": 0,
    "NOT REPRODUCED": NOT_REPRODUCED,
    "NOTHING COMPARED": NOTHING_COMPARED,
    "FAILURE REPRODUCED": FAILURE_REPRODUCED,
}
_FINE = ("identical", "within tolerance")


@dataclass(frozen=True)
class OutputCheck:
    """One declared output compared with the original run's."""

    path: str
    status: OutputStatus
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


def _leaves(value: Any, prefix: tuple[str | int, ...] = ()) -> dict[tuple[str | int, ...], Any]:
    """Each value by its path of keys and list indexes (a tuple: `{"a": {"b": 1}}` and `{"a.b": 1}` differ)."""
    if isinstance(value, dict):
        out: dict[tuple[str | int, ...], Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, (*prefix, str(key))))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_leaves(item, (*prefix, index)))
        return out
    return {prefix: value}


def _named(*documents: dict[tuple[str | int, ...], Any]) -> list[dict[str, Any]]:
    """The documents' values by their names as people read them (`a.b[0]`); ValueError when two different paths of
    the two documents read as one name (the documents differ in shape, not in a value)."""
    names: dict[str, tuple[str | int, ...]] = {}
    for path in {path for document in documents for path in document}:
        name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).removeprefix(".")
        if names.setdefault(name, path) != path:
            raise ValueError(f"two different values are named {name}")
    by_path = {path: name for name, path in names.items()}
    return [{by_path[path]: value for path, value in document.items()} for document in documents]


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
        if type(a) is type(b) and a == b:  # true is not 1
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


def _by_presence(path: str, before: str | None, after: str | None) -> OutputCheck:
    """The cases the hashes decide alone: equal, or produced by one run only, or by neither."""
    if before == after:
        return OutputCheck(path, "identical") if before else OutputCheck(path, "not produced", ("neither run did",))
    if after is None:
        return OutputCheck(path, "missing", ("the new run did not produce it",))
    return OutputCheck(path, "differs", ("the original run did not produce it",))


def compare_output(
    path: str, hashes: tuple[str | None, str | None], before: Path | None, after: Path, tolerance: Tolerance
) -> OutputCheck:
    """Bit-identical, or (JSON/CSV with a saved copy) equal within the tolerance, or which values moved."""
    before_hash, after_hash = hashes
    if before_hash is None or after_hash is None or before_hash == after_hash:
        return _by_presence(path, before_hash, after_hash)
    hashes_moved = f"sha256 {str(before_hash)[:12]} -> {after_hash[:12]}"
    if before is None or not before.is_file():
        return OutputCheck(path, "differs", (hashes_moved,))
    if sha256_file(before) != before_hash:  # values are compared with the output the record names, or not at all
        return OutputCheck(path, "differs", (f"{hashes_moved} (the original's kept copy is not its output)",))
    try:
        if after.suffix.lower() == ".json":
            old, new = _named(
                _leaves(strict_json(before.read_text(encoding="utf-8"), nan=True)),
                _leaves(strict_json(after.read_text(encoding="utf-8"), nan=True)),
            )
        else:
            old, new = _table(before), _table(after)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        return OutputCheck(path, "differs", (f"cannot compare as data: {exc}",))
    within, moved = _compare_values(old, new, tolerance)
    return OutputCheck(path, "within tolerance" if within else "differs", tuple(moved))


@contextlib.contextmanager
def code_at(project_dir: Path, record: RunRecord, store: RunStore, origin: Origin = "own") -> Iterator[Path]:
    """The recorded code in a separate directory: a git worktree at the commit, the recorded diff applied, the
    untracked files restored from `.envlock/objects/`. RerunError when any of it cannot be brought back; for a
    foreign run, BundleError when a path it writes or mounts leads out of the worktree through a link."""
    commit = record.git.commit if record.git else None
    run_git = GIT_OF[origin]
    with tempfile.TemporaryDirectory(prefix="envlock-reproduce-") as tmp:
        work = Path(tmp) / "code"
        if commit is None:
            # Not a git repository when recorded: the project as it is now is the best there is.
            shutil.copytree(project_dir, work, ignore=shutil.ignore_patterns(STATE_DIR, ".git"))
            yield work
            return

        top = toplevel(run_git, project_dir)
        inside = project_dir.resolve().relative_to(top.resolve()) if top else Path()
        with detached_worktree(run_git, project_dir, work, commit):
            patch = store.directory(record.run_id) / DIFF_FILE
            if record.git and record.git.diff_sha256:
                if not patch.is_file() or sha256_file(patch) != record.git.diff_sha256:
                    raise RerunError(
                        f"the run's diff.patch is missing or is not the diff recorded ({patch.resolve()})",
                        hint="the uncommitted changes of that run cannot be brought back",
                    )
                apply_patch(run_git, work, patch)
            _restore_untracked(record, work / inside, ObjectStore(ProjectLayout(store.project_dir).objects))
            if origin == "foreign":
                _refuse_links_out(work, inside, record)
            yield work / inside


def _refuse_links_out(work: Path, inside: Path, record: RunRecord) -> None:
    """A foreign run's code, checked out and patched: no declared input or output may lead out of the worktree
    through a link the commit or the patch made (the engine would mount, and envlock read, what it points at)."""
    paths = [*record.declared_outputs, *record.outputs, *(record.inputs.paths if record.inputs else ())]
    for path in dict.fromkeys(paths):
        if not resolves_inside(work, (inside / path).as_posix()):
            raise BundleError(
                f"refused: {path} leads out of the reproduction's work tree ({work}) through a symbolic link",
                hint="the bundled code links outside its own folder; envlock never mounts or writes there",
            )


def _restore_untracked(record: RunRecord, root: Path, objects: ObjectStore) -> None:
    """Write the run's saved untracked files back, each verified against its recorded sha256."""
    for name, digest in (record.git.saved if record.git else {}).items():
        data = objects.get(digest) if project_path_problem(name) is None else None
        if data is None:
            raise RerunError(
                f"untracked file {name} cannot be restored: its copy (sha256 {digest[:12]}) is missing or damaged "
                f"in {objects.root}",
                hint="the run's untracked code is gone; commit such files to make runs reproducible",
            )
        write_confined(root, name, data)  # never through a link the commit or the patch made


@dataclass(frozen=True)
class Verdict:
    """Reproduced or not, and why: every output compared, every factor compared or not, what moved."""

    original: RunRecord
    new: RunRecord
    outputs: tuple[OutputCheck, ...]
    changes: RunDiff
    log: OutputCheck | None = None  # the logs compared, when no output was
    compared: tuple[str, ...] = ()  # the factors compared, with what they covered
    not_compared: tuple[str, ...] = ()  # what could not be compared, and why
    extra: tuple[str, ...] = ()  # files the re-run wrote into a declared directory that the original did not

    @property
    def checks(self) -> tuple[OutputCheck, ...]:
        """What was actually compared: the outputs either run produced, else the log."""
        produced = tuple(check for check in self.outputs if check.status != "not produced")
        return produced or ((self.log,) if self.log else ())

    @property
    def outcome(self) -> Outcome:
        """NOT REPRODUCED on any difference (exit status, an input, an output, the log); NOTHING COMPARED when no
        output and no log could be compared; FAILURE REPRODUCED when the original had failed and failed again the
        same way; REPRODUCED only for a successful run whose compared results all match."""
        if self.new.exit_code != self.original.exit_code or self.changes.inputs:
            return "NOT REPRODUCED"
        if any(check.status not in _FINE for check in self.checks):
            return "NOT REPRODUCED"
        if not self.checks:
            return "NOTHING COMPARED"
        return "FAILURE REPRODUCED" if self.original.exit_code != 0 else "REPRODUCED"

    @property
    def reproduced(self) -> bool:
        """REPRODUCED, and nothing less."""
        return self.outcome == "REPRODUCED"

    @property
    def exit_code(self) -> int:
        """The verdict's exit status (0 only for REPRODUCED)."""
        return EXIT_OF[self.outcome]

    def lines(self) -> list[str]:
        """The verdict as text."""
        lines = [f"{self.outcome}: run {self.new.run_id} re-ran {self.original.run_id}"]
        if self.new.exit_code != self.original.exit_code:
            lines.append(f"  exit code: {self.original.exit_code} -> {self.new.exit_code}")
        else:
            lines.append(f"  exit code: {self.new.exit_code} (both)")
        for check in self.outputs:
            lines.append(f"  output {check.path}: {check.status}")
            lines += [f"    {detail}" for detail in check.details]
        if self.log and self.log in self.checks:
            lines.append(f"  log (no output to compare): {self.log.status}")
            lines += [f"    {detail}" for detail in self.log.details]
        moved = [line for line in self.changes.lines() if not line.startswith("output ")]
        lines.append(f"  compared: {', '.join(self.compared)}")
        lines += [f"  changed: {line}" for line in moved] or ["  changed: nothing"]
        lines += [f"  not compared: {what}" for what in self.not_compared]
        lines += [f"  also written by the re-run (not compared): {path}" for path in self.extra]
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready verdict (kept beside the new run's record as verdict.json)."""
        return {
            "verdict": self.outcome,
            "exit_code": self.exit_code,
            "reproduced": self.reproduced,
            "original": self.original.run_id,
            "new": self.new.run_id,
            "exit_codes": {"original": self.original.exit_code, "new": self.new.exit_code},
            "outputs": [{"path": c.path, "status": c.status, "details": list(c.details)} for c in self.outputs],
            "log": {"status": self.log.status, "details": list(self.log.details)} if self.log else None,
            "compared": list(self.compared),
            "not_compared": list(self.not_compared),
            "extra": list(self.extra),
            "changes": self.changes.as_dict(),
        }


def _log_check(original: RunRecord, new: RunRecord, store: RunStore) -> OutputCheck | None:
    """The two logs by sha256 (an original recorded before envlock hashed its log: its log file as it is)."""
    before = original.log_sha256
    if before is None and store.log_path(original.run_id).is_file():
        before = sha256_file(store.log_path(original.run_id))
    if before is None or new.log_sha256 is None:
        return None
    if before == new.log_sha256:
        return OutputCheck(LOG_FILE, "identical")
    return OutputCheck(LOG_FILE, "differs", (f"sha256 {before[:12]} -> {new.log_sha256[:12]}",))


def _factors(original: RunRecord, new: RunRecord) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(compared, not compared): each factor of the design brief, with what it covered or why it could not be."""
    compared = ["image", "lock"]
    missing: list[str] = []
    git = original.git
    if git is None or git.commit is None:
        missing.append("code: the original was not in a git repository; the project was copied as it is now")
    else:
        parts = [f"commit {git.commit[:10]}"]
        if git.diff_sha256:
            parts.append("diff")
        if git.saved:
            parts.append(f"{len(git.saved)} untracked file{'s' if len(git.saved) > 1 else ''}")
        compared.append(f"code ({' + '.join(parts)})")
        missing += [f"untracked {name}: {git.skipped.get(name, 'no copy was kept')}" for name in git.unsaved]
    if original.inputs:
        compared.append(f"inputs ({len(original.inputs.files)} files)")
    else:
        missing.append("inputs: none declared (--input, or inputs = [...] in [tool.envlock])")
    absent = sorted(set(original.passed_env) - set(new.passed_env))
    compared.append(f"environment names ({', '.join(original.passed_env) or 'none passed'})")
    missing += [f"environment {name}: not passed (not set here, or not named with --env)" for name in absent]
    compared += ["seed", "host"]
    return tuple(compared), tuple(missing)


def reproduce_run(
    original: RunRecord,
    store: RunStore,
    project_dir: Path,
    rerun: Callable[[Path], RunRecord],
    tolerance: Tolerance,
    *,
    origin: Origin = "own",
    evidence: RunEvidence,
) -> Verdict:
    """Run `rerun` on the recorded code and compare its outputs and circumstances with the original's; the new
    run's outputs are kept under its folder (outputs/), the verdict beside its record (verdict.json), and the new
    run is attested again with both (its attestation then binds the verdict it carries)."""
    with code_at(project_dir, original, store, origin) as code:
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
        for path, digest in new.outputs.items():
            kept = store.saved_output(new.run_id, path)
            if digest and not kept.is_file() and project_path_problem(path) is None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(code / path, kept)
    lock_before = lockfile.read(store.directory(original.run_id) / LOCK_FILE)
    lock_after = lockfile.read(store.directory(new.run_id) / LOCK_FILE)
    compared, not_compared = _factors(original, new)
    verdict = Verdict(
        original,
        new,
        checks,
        diff_runs(original, new, lock_before, lock_after),
        log=_log_check(original, new, store),
        compared=compared,
        not_compared=not_compared,
        extra=tuple(sorted(set(new.outputs) - set(original.outputs))),
    )
    store.save_verdict(new.run_id, verdict.as_dict())
    evidence.run_ended(store.directory(new.run_id))
    return verdict


def rerun_request(original: RunRecord, force: bool, pass_env: tuple[str, ...] | None = None) -> RunRequest:
    """What reproduce runs again: the original's command, seed, declared outputs and inputs, GPU mode and --force
    (a forced original is re-run forced), and the host variables `pass_env` names (default: those the original
    passed); a multi-node run is refused (one container here would wait for nodes that never come)."""
    nodes = original.environment.get("ENVLOCK_NNODES", "1")
    if nodes != "1":
        raise UsageError(
            f"run {original.run_id} ran on {nodes} nodes: reproduce re-runs a command in one container, here",
            hint=f"submit it again (envlock submit --slurm -N {nodes} -- {' '.join(original.command)}), then compare: "
            f"envlock diff {original.run_id} NEW_RUN",
        )
    request = original.scheduler.request if original.scheduler else None
    outputs = tuple(original.declared_outputs) or tuple(original.outputs) or (request.outputs if request else ())
    gpus = original.gpus if original.gpus is not None else (request.gpus if request else None)
    return RunRequest(
        command=original.command,
        seed=original.seed,
        force=force or original.forced or bool(request and request.force),
        gpus=gpus,
        outputs=outputs,
        pass_env=tuple(original.passed_env) if pass_env is None else pass_env,
        reproduces=original.run_id,
        inputs=tuple(original.inputs.paths) if original.inputs else (),
        params=dict(original.params.given) if original.params else {},
        param_files=tuple(original.params.files) if original.params else (),
    )
