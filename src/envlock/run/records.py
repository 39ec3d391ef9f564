"""Run records under `.envlock/runs/<id>/`: written atomically at start and at end, never half-written."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from envlock.codecs import Codec, Problems, field, strict_json
from envlock.errors import RunNotFoundError, RunRecordError, RunWaitTimeoutError
from envlock.fsutil import atomic_write_bytes, atomic_write_text, read_small_text, unreadable
from envlock.paths import (
    DIFF_FILE,
    LOCK_FILE,
    LOG_FILE,
    NODES_DIR,
    OUTPUTS_DIR,
    RECORD_FILE,
    VERDICT_FILE,
    ProjectLayout,
)
from envlock.run.hostprobe import HostState
from envlock.run.inputs import InputSet
from envlock.run.schema import (
    CHAIN_ID,
    RUN_ID,
    SHA256,
    GitRecord,
    JobRecord,
    Link,
    ParamsRecord,
    RuntimeRecord,
    TrackingRecord,
)

RunStatus = Literal["queued", "running", "finished", "failed", "interrupted"]
# 2: the parts (git, host, scheduler, tracking) typed and their shape checked on read; the JSON keys are version 1's.
# 3: the untracked files' saved copies (git), inputs, declared_outputs, gpus, log_sha256 (absent in 1 and 2: unknown).
# 4: the runtime (docker, podman, charliecloud) and its version; older records read with runtime None (docker).
# 5: lineage (links, tainted, chain) and params; older records read with none of them.
RECORD_VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
_RUN_ID = RUN_ID
_MOVES = ("changed", "missing", "added")


FINAL: frozenset[str] = frozenset({"finished", "failed", "interrupted"})


def now() -> str:
    """UTC time, ISO 8601, to the microsecond."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_run_id(text: object) -> bool:
    """True for a string shaped like a run id (`20261126T075012Z-3f9a1c`): safe to name a folder with."""
    return isinstance(text, str) and _RUN_ID.fullmatch(text) is not None


def new_run_id() -> str:
    """Sortable by time, unique: `20261126T075012Z-3f9a1c`."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _moves_problems(moved: Mapping[str, str]) -> list[str]:
    return [f"{how!r} must be one of {', '.join(_MOVES)}" for how in moved.values() if how not in _MOVES]


class RunRecord(Codec, keys="snake"):
    """Everything needed, months later, to say which software and hardware produced a result.

    JSON: field names at the top, the parts' kebab-case keys inside; a part not taken yet is {} (git, host) or null.
    """

    run_id: str = field(pattern=RUN_ID)
    status: RunStatus
    command: list[str]
    image_id: str
    image_reference: str
    repo_digests: list[str]
    lock_hash: str
    platform: str
    git: GitRecord | None = field(none_as={})  # None: not taken yet (a queued job's node takes it)
    host: HostState | None = field(none_as={})  # None: not probed yet (queued), or never (the command never started)
    seed: int
    environment: dict[str, str] = field(absent={})  # what envlock set (determinism, ENVLOCK_*): envlock's own values
    passed_env: list[str]  # names only: values may be secrets
    forced: bool
    preflight: list[str]
    started: str
    container: str
    envlock_pid: int
    ended: str | None = None
    exit_code: int | None = None
    outputs: dict[str, str | None] = field(default_factory=dict)  # path → sha256 (None: not produced)
    reproduces: str | None = field(default=None, pattern=RUN_ID)  # the run this one re-ran (envlock reproduce)
    scheduler: JobRecord | None = None  # a batch job's facts (envlock submit): kind, job id, options, node…
    error: str | None = None  # why a submitted run never started its command (preflight, engine, cancelled)
    tracking: TrackingRecord | None = None  # the MLflow run the metrics went to: uri (no credentials), run id
    inputs: InputSet | None = None  # the declared inputs, every file's sha256 taken before the command started
    declared_outputs: list[str] = field(default_factory=list)  # as declared (a directory stays a directory)
    gpus: bool | None = None  # whether the container got GPUs (None: recorded before envlock said)
    log_sha256: str | None = field(default=None, pattern=SHA256)  # sha256 of log.txt at the end
    runtime: RuntimeRecord | None = None  # what ran the command and its version (None: not started; before v3)
    links: tuple[Link, ...] = ()  # inputs whose bytes an earlier run wrote, found by hash when this run started
    # Inputs that moved while it ran: path → how.
    tainted: dict[str, str] = field(default_factory=dict, check=_moves_problems)
    params: ParamsRecord | None = None  # declared hyperparameters (--param, params = [...] files)
    chain: str | None = field(default=None, pattern=CHAIN_ID)  # the chain re-run this run belongs to
    # The project's own packages whose version comes from VCS → the version that ran (not in the lock: the commit's)
    package_versions: dict[str, str] = field(default_factory=dict)
    # Checked before the rest (a newer version is refused whole); a record is held, and written, as the current one.
    record_version: int = field(default=RECORD_VERSION, decoded=False)

    @classmethod
    def from_dict(cls, data: object, where: str = "run record") -> RunRecord:
        """Read a record of any version this envlock knows, its shape checked; RunRecordError lists every problem."""
        if not isinstance(data, Mapping):
            raise RunRecordError(f"{where} is damaged: it must be a table, not {type(data).__name__}")
        problems = Problems()
        version = data.get("record_version", 1)  # records before versioning said nothing: version 1
        if isinstance(version, int) and not isinstance(version, bool) and version > RECORD_VERSION:
            raise RunRecordError(
                f"{where} is record version {version}; this envlock reads versions "
                f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}",
                hint="a newer envlock wrote it: upgrade envlock (pip install -U envlock) to read it",
            )
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            problems.add("record_version", f"must be one of {list(READABLE_VERSIONS)}, not {version!r}")
        record = cls.decode(data, problems)  # read in any known version, held (and written again) as the current one
        if problems:
            found = problems.items
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise RunRecordError(f"{where} is damaged: {found[0]}{more}", details=tuple(found[1:]))
        return record


class RunStore:
    """The project's run records."""

    def __init__(self, project_dir: Path, node: int | None = None) -> None:
        self.project_dir = project_dir
        self.root = ProjectLayout(project_dir).runs
        self.node = node

    def directory(self, run_id: str) -> Path:
        """Where one run keeps its record, log, lock copy and diff (a multi-node job's other nodes: nodes/<rank>/)."""
        return self.root / run_id if self.node is None else self.root / run_id / NODES_DIR / str(self.node)

    def for_node(self, rank: int) -> RunStore:
        """The records of a multi-node job's node `rank` (> 0; rank 0 keeps the run's own record)."""
        return RunStore(self.project_dir, rank)

    def node_records(self, run_id: str) -> dict[int, RunRecord]:
        """The records of a multi-node job's other nodes by rank, the rank read from their folder (a node's task
        killed before it started has only the queued copy, without its facts); unreadable ones left out."""
        nodes = self.root / run_id / NODES_DIR
        ranks = sorted(int(p.name) for p in nodes.iterdir() if p.name.isdigit()) if nodes.is_dir() else []
        found = {}
        for rank in ranks:
            try:
                found[rank] = self._read(nodes / str(rank) / RECORD_FILE)
            except RunRecordError:
                continue
        return found

    def saved_output(self, run_id: str, path: str) -> Path:
        """Where a run keeps its copy of a small metrics output (for comparisons within a tolerance)."""
        return self.directory(run_id) / OUTPUTS_DIR / path

    def save_verdict(self, run_id: str, verdict: Mapping[str, Any]) -> None:
        """Keep `envlock reproduce`'s verdict beside the record of the run it made."""
        text = json.dumps(verdict, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.directory(run_id) / VERDICT_FILE, text)

    def verdict(self, run_id: str) -> dict[str, Any] | None:
        """The verdict kept beside a reproducing run's record (None: none, or unreadable)."""
        try:
            data = strict_json(read_small_text(self.directory(run_id) / VERDICT_FILE))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def log_path(self, run_id: str) -> Path:
        """The run's combined stdout/stderr."""
        return self.directory(run_id) / LOG_FILE

    def create(self, run_id: str, lock_text: str) -> Path:
        """A new run's folder with its copy of the lock."""
        directory = self.directory(run_id)
        directory.mkdir(parents=True, exist_ok=False)
        atomic_write_text(directory / LOCK_FILE, lock_text)
        return directory

    def begin(self, record: RunRecord, diff: bytes) -> None:
        """Save the diff (when dirty) and the record in state `running`."""
        if diff:
            atomic_write_bytes(self.directory(record.run_id) / DIFF_FILE, diff)
        self.save(record)

    def start(self, record: RunRecord, lock_text: str, diff: bytes) -> None:
        """Save the lock copy, the diff (when dirty) and the record in state `running`."""
        self.create(record.run_id, lock_text)
        self.begin(record, diff)

    def save(self, record: RunRecord) -> None:
        """Replace the record atomically."""
        text = json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n"
        directory = self.directory(record.run_id)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / RECORD_FILE, text)

    def matching(self, prefix: str) -> list[str]:
        """The ids of the runs that start with `prefix` (none for an empty one), oldest first."""
        return [p for p in self._ids() if p.startswith(prefix)] if prefix else []

    def load(self, run_id: str) -> RunRecord:
        """One record; a unique prefix of the id is enough."""
        matches = self.matching(run_id)
        if len(matches) != 1:
            more = "matches several runs" if matches else "is not a run of this project"
            raise RunNotFoundError(f"{run_id!r} {more}")
        return self._read(self.directory(matches[0]) / RECORD_FILE)

    @staticmethod
    def _read(path: Path) -> RunRecord:
        try:
            data = strict_json(read_small_text(path, follow_links=False))
        except (OSError, ValueError) as exc:
            raise RunRecordError(
                f"run record {path} is unreadable ({exc.__class__.__name__}: {unreadable(exc)})"
            ) from exc
        return RunRecord.from_dict(data, f"run record {path}")

    def scan(self) -> tuple[list[RunRecord], list[Path]]:
        """Every readable record, oldest first, and the paths of records that cannot be read (edited or damaged
        by hand; envlock writes them atomically)."""
        records: list[RunRecord] = []
        broken: list[Path] = []
        for run_id in self._ids():
            path = self.directory(run_id) / RECORD_FILE
            if path.is_file() or path.is_symlink():
                try:
                    records.append(self._read(path))
                except RunRecordError:
                    broken.append(path)
        broken += [entry / RECORD_FILE for entry in self._entries() if entry.is_symlink()]
        return records, broken

    def all(self) -> list[RunRecord]:
        """Every readable record, oldest first."""
        return self.scan()[0]

    def _entries(self) -> list[Path]:
        return sorted(self.root.iterdir()) if self.root.is_dir() else []

    def _ids(self) -> list[str]:
        """The run folders: real folders only. A link in a run folder's place leads elsewhere (envlock never makes
        one), and whatever envlock then wrote there (an orphan marked interrupted) would land outside the project."""
        return [entry.name for entry in self._entries() if entry.is_dir() and not entry.is_symlink()]

    def settle_orphans(self, remove_container: Any, records: list[RunRecord] | None = None) -> list[RunRecord]:
        """Local runs whose envlock died (kill -9): mark them interrupted and remove their containers. A batch job's
        envlock lives on its node: the scheduler is asked about those (envlock.submit.settle_jobs)."""
        settled = []
        for record in self.all() if records is None else records:
            if record.status == "running" and record.scheduler is None and not _alive(record.envlock_pid):
                remove_container(record.container)
                finished = replace(record, status="interrupted", ended=now())
                self.save(finished)
                settled.append(finished)
        return settled


def wait_until_final(
    current: Callable[[], RunRecord],
    timeout: float | None,
    *,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunRecord:
    """Ask `current` (the record, settled against its scheduler) every `poll` seconds until the run is final."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        record = current()
        if record.status in FINAL:
            return record
        if deadline is not None and clock() >= deadline:
            raise RunWaitTimeoutError(
                f"run {record.run_id} is still {record.status} after {timeout:g} s",
                hint=f"envlock runs show {record.run_id}; wait longer with --timeout (or without it)",
            )
        sleep(poll if deadline is None else max(0.0, min(poll, deadline - clock())))


def exit_status(record: RunRecord) -> int:
    """What a shell should see for a finished run: its command's exit code; 130 when interrupted; 1 when it never
    ran its command (the record's error says why)."""
    if record.status == "interrupted":
        return 130
    if record.exit_code is not None:
        return record.exit_code
    return 0 if record.status == "finished" else 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
