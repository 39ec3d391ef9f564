"""The run record's typed parts (code, host, batch job, tracking) and the checked reading of their JSON form.

JSON keeps the key names records always had: snake_case at the top, kebab-case inside the parts (external readers
and MLflow tags see no change). Record version 2 is version 1 with its shape enforced on read; version 3 adds the
untracked files' saved copies, the inputs, the declared outputs, the GPU mode and the log's hash; version 4: the
runtime that ran the command (docker, podman, charliecloud) and its version; version 5: lineage (the links from
inputs to the earlier runs that wrote them, the inputs that moved during the run, the chain re-run a run belongs
to) and the declared hyperparameters; version 6: the versions of the project's own packages versioned by VCS that
ran (no lock input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from envlock.engine.runtimes import RUNTIMES, RuntimeInfo
from envlock.run.gitstate import GitState
from envlock.run.hostprobe import HostState
from envlock.run.inputs import InputSet

_HEX_COMMIT = re.compile(r"[0-9a-f]{1,64}")  # hex only: a recorded commit never reaches git as an option
_SHA256 = re.compile(r"[0-9a-f]{64}")
RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")  # it names a folder: nothing else may pass
CHAIN_ID = re.compile(r"chain-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


def relative_path_problem(path: str) -> str | None:
    """Why a recorded project-relative path may not be used (absolute, or climbing out), or None."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts):
        return f"{path!r} is not a plain path inside the project"
    return None


class Table:
    """One JSON table read field by field; every problem is collected in `problems` (reported all at once)."""

    def __init__(self, data: object, where: str, problems: list[str]) -> None:
        if not isinstance(data, Mapping):
            problems.append(f"{where.removesuffix('.') or 'the record'} must be a table, not {_shown(data)}")
            data = {}
        self.data: Mapping[str, Any] = data
        self.where = where
        self.problems = problems

    def _bad(self, key: str, wanted: str) -> None:
        self.problems.append(f"{self.where}{key!r} must be {wanted}, not {_shown(self.data.get(key))}")

    def text(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        """A required string (matching `pattern` when given)."""
        value = self.data.get(key)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            self._bad(key, "a string" if pattern is None else f"a string like {pattern.pattern}")
            return ""
        return value

    def optional_text(self, key: str, pattern: re.Pattern[str] | None = None) -> str | None:
        """A string or null; absent counts as null (records written before the field existed)."""
        return None if self.data.get(key) is None else self.text(key, pattern)

    def integer(self, key: str) -> int:
        """A required integer (never a boolean)."""
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            self._bad(key, "an integer")
            return 0
        return value

    def optional_integer(self, key: str) -> int | None:
        """An integer or null."""
        return None if self.data.get(key) is None else self.integer(key)

    def flag(self, key: str, default: bool | None = None) -> bool:
        """A required boolean (absent: `default` when one is given)."""
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self._bad(key, "true or false")
            return False
        return value

    def optional_flag(self, key: str) -> bool | None:
        """A boolean or null."""
        return None if self.data.get(key) is None else self.flag(key)

    def texts(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """A list of strings (absent: `default` when one is given)."""
        value = self.data.get(key, default)
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            self._bad(key, "a list of strings")
            return ()
        return tuple(value)

    def text_table(self, key: str, optional_values: bool = False) -> dict[str, Any]:
        """A table of strings (values may be null when `optional_values`); absent: empty."""
        value = self.data.get(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and (isinstance(v, str) or (optional_values and v is None)) for k, v in value.items()
        ):
            self._bad(key, "a table of strings" + (" or nulls" if optional_values else ""))
            return {}
        return dict(value)

    def part(self, key: str) -> Table | None:
        """A sub-table; None when null, absent or empty (a part not taken yet)."""
        value = self.data.get(key)
        return None if value is None or value == {} else Table(value, f"{self.where}{key}.", self.problems)

    def unknown(self, known: frozenset[str]) -> None:
        """Refuse keys no envlock writes (a hand edit or a typo), naming the closest known one."""
        for key in sorted(set(self.data) - known):
            near = min(known, key=lambda k: _distance(str(key), k))
            hint = f" (did you mean {near!r}?)" if _distance(str(key), near) <= 2 else ""
            self.problems.append(f"{self.where}{key!r} is not a record field{hint}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


@dataclass(frozen=True)
class GitRecord:
    """Where the code was: commit (None outside git), dirty flag, sha256 of the diff saved beside the record, the
    untracked files, and of those the ones copied into `.envlock/objects/` (by sha256) and the ones not (why)."""

    commit: str | None
    dirty: bool
    diff_sha256: str | None = None
    untracked: tuple[str, ...] = ()
    saved: Mapping[str, str] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, state: GitState) -> GitRecord:
        """The recorded form of a probed git state (the diff itself goes to diff.patch)."""
        saved, skipped = dict(state.saved), dict(state.skipped)
        return cls(state.commit, state.dirty, state.diff_sha256, state.untracked, saved, skipped)

    @property
    def unsaved(self) -> tuple[str, ...]:
        """Untracked files of which no copy was kept (over the cap, or recorded before envlock kept copies)."""
        return tuple(name for name in self.untracked if name not in self.saved)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "commit": self.commit,
            "dirty": self.dirty,
            "diff-sha256": self.diff_sha256,
            "untracked": list(self.untracked),
            "untracked-saved": dict(self.saved),
            "untracked-skipped": dict(self.skipped),
        }

    @classmethod
    def read(cls, table: Table) -> GitRecord:
        """Read the JSON form, collecting problems (names become paths in a worktree: checked here)."""
        table.unknown(_keys("commit", "dirty", "diff-sha256", "untracked", "untracked-saved", "untracked-skipped"))
        saved = table.text_table("untracked-saved")
        for name, digest in saved.items():
            if problem := relative_path_problem(name):
                table.problems.append(f"{table.where}'untracked-saved': {problem}")
            if not _SHA256.fullmatch(digest):
                table.problems.append(f"{table.where}'untracked-saved': {digest!r} is not a sha256")
        return cls(
            commit=table.optional_text("commit", _HEX_COMMIT),
            dirty=table.flag("dirty"),
            diff_sha256=table.optional_text("diff-sha256", _SHA256),
            untracked=table.texts("untracked", ()),
            saved=saved,
            skipped=table.text_table("untracked-skipped"),
        )


def inputs_as_dict(inputs: InputSet) -> dict[str, Any]:
    """The inputs part's JSON form: declared paths, per-file sha256, the manifest digest, the absent paths."""
    return {
        "paths": list(inputs.paths),
        "files": dict(inputs.files),
        "digest": inputs.digest,
        "missing": list(inputs.missing),
    }


def read_inputs(table: Table) -> InputSet:
    """The inputs part, its paths and digests checked (and the manifest digest recomputed and compared)."""
    table.unknown(_keys("paths", "files", "digest", "missing"))
    files = table.text_table("files")
    for name, digest in files.items():
        if problem := relative_path_problem(name):
            table.problems.append(f"{table.where}'files': {problem}")
        if not _SHA256.fullmatch(digest):
            table.problems.append(f"{table.where}'files': {digest!r} is not a sha256")
    paths = table.texts("paths")
    for declared in paths:
        if problem := relative_path_problem(declared.rstrip("/")):
            table.problems.append(f"{table.where}'paths': {problem}")
    inputs = InputSet(paths, files, table.texts("missing", ()))
    if table.text("digest", _SHA256) and table.data.get("digest") != inputs.digest:
        table.problems.append(f"{table.where}'digest' is not the digest of the files listed")
    return inputs


def read_host(table: Table) -> HostState:
    """The host part: HostState's own JSON form, its shape checked by HostState.from_dict."""
    table.unknown(
        _keys("driver-version", "cuda-driver-version", "gpus", "cpu-model", "kernel", "docker-version", "nvml-error")
    )
    try:
        return HostState.from_dict(table.data)
    except ValueError as exc:
        table.problems.append(f"{table.where[:-1]}: {str(exc).removeprefix('host record: ')}")
        return HostState(None, None, (), "", "", None)


@dataclass(frozen=True)
class TrackingRequest:
    """The MLflow settings a batch job's node starts its run with (the URI without credentials)."""

    uri: str
    experiment: str
    reuse: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"uri": self.uri, "experiment": self.experiment, "reuse": self.reuse}

    @classmethod
    def read(cls, table: Table) -> TrackingRequest:
        """Read the JSON form, collecting problems."""
        table.unknown(_keys("uri", "experiment", "reuse"))
        return cls(table.text("uri"), table.text("experiment"), table.optional_text("reuse"))


@dataclass(frozen=True)
class JobRequest:
    """What a queued run's node needs that the record does not already hold."""

    outputs: tuple[str, ...] = ()
    force: bool = False
    gpus: bool | None = None
    mlflow: TrackingRequest | None = None
    runtime: str | None = None  # what the node runs the image with (None: docker, as before version 3)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the runtime only when chosen: older readers see the keys they know)."""
        data = {
            "outputs": list(self.outputs),
            "force": self.force,
            "gpus": self.gpus,
            "mlflow": self.mlflow.as_dict() if self.mlflow else None,
        }
        return data | ({"runtime": self.runtime} if self.runtime else {})

    @classmethod
    def read(cls, table: Table) -> JobRequest:
        """Read the JSON form, collecting problems."""
        table.unknown(_keys("outputs", "force", "gpus", "mlflow", "runtime"))
        mlflow = table.part("mlflow")
        runtime = table.optional_text("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            table.problems.append(f"{table.where}'runtime' must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        return cls(
            outputs=table.texts("outputs", ()),
            force=table.flag("force", False),
            gpus=table.optional_flag("gpus"),
            mlflow=TrackingRequest.read(mlflow) if mlflow else None,
            runtime=runtime,
        )


_JOB_KEYS = frozenset(
    {"kind", "job-id", "options", "submitted", "request", "submit-host", "node", "host", "rank", "nodes", "state"}
)


@dataclass(frozen=True)
class JobRecord:
    """A batch job's facts: queued (kind, job id, sbatch options, request), then the node's, then Slurm's end."""

    kind: str  # "slurm"
    job_id: str | None  # None only between the record's first write and sbatch's answer
    options: tuple[str, ...]
    submitted: str
    request: JobRequest
    submit_host: str | None = None
    node: str | None = None  # Slurm's node name, on the node
    host: str | None = None  # the node's hostname (its container is removed there when settling)
    rank: int | None = None
    nodes: str | None = None  # the job's node list, SLURM_JOB_NODELIST
    state: str | None = None  # Slurm's final state, when `envlock runs` closed the record

    def as_dict(self) -> dict[str, Any]:
        """JSON form; the node's and Slurm's facts only once known (as before: absent until then)."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "job-id": self.job_id,
            "options": list(self.options),
            "submitted": self.submitted,
            "request": self.request.as_dict(),
        }
        later = {
            "submit-host": self.submit_host,
            "node": self.node,
            "host": self.host,
            "rank": self.rank,
            "nodes": self.nodes,
            "state": self.state,
        }
        return data | {key: value for key, value in later.items() if value is not None}

    @classmethod
    def read(cls, table: Table) -> JobRecord:
        """Read the JSON form, collecting problems."""
        table.unknown(_JOB_KEYS)
        request = table.part("request")
        return cls(
            kind=table.text("kind"),
            job_id=table.optional_text("job-id"),
            options=table.texts("options", ()),
            submitted=table.text("submitted"),
            request=JobRequest.read(request) if request else JobRequest(),
            submit_host=table.optional_text("submit-host"),
            node=table.optional_text("node"),
            host=table.optional_text("host"),
            rank=table.optional_integer("rank"),
            nodes=table.optional_text("nodes"),
            state=table.optional_text("state"),
        )

    def at_node(self, node: str, host: str, rank: int, nodes: str) -> JobRecord:
        """These facts with the node's added."""
        return replace(self, node=node, host=host, rank=rank, nodes=nodes)


@dataclass(frozen=True)
class TrackingRecord:
    """The MLflow run a run's metrics went to: the store (no credentials), the run, where to look at it."""

    uri: str
    run_id: str
    experiment_id: str
    link: str
    kind: str = "mlflow"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "uri": self.uri,
            "run-id": self.run_id,
            "experiment-id": self.experiment_id,
            "link": self.link,
        }

    @classmethod
    def read(cls, table: Table) -> TrackingRecord:
        """Read the JSON form, collecting problems."""
        table.unknown(_keys("kind", "uri", "run-id", "experiment-id", "link"))
        return cls(
            uri=table.text("uri"),
            run_id=table.text("run-id"),
            experiment_id=table.text("experiment-id"),
            link=table.text("link"),
            kind=table.text("kind"),
        )


@dataclass(frozen=True)
class RuntimeRecord:
    """The container runtime that ran the command, and its version (None when it did not say)."""

    name: str
    version: str | None

    @classmethod
    def of(cls, info: RuntimeInfo) -> RuntimeRecord:
        """The recorded form of a launcher's own account of itself."""
        return cls(info.name, info.version)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "version": self.version}

    @classmethod
    def read(cls, table: Table) -> RuntimeRecord:
        """Read the JSON form, collecting problems."""
        table.unknown(_keys("name", "version"))
        name = table.text("name")
        if name and name not in RUNTIMES:
            table.problems.append(f"{table.where}'name' must be one of {', '.join(RUNTIMES)}, not {name!r}")
        return cls(name, table.optional_text("version"))


@dataclass(frozen=True)
class Link:
    """One input found, by its content hash at the run's start, among an earlier run's outputs (version 5)."""

    input: str  # the input file, relative to the project
    sha256: str  # its content, hashed before the command started
    run: str  # the earlier run that wrote these bytes
    output: str  # under which name that run wrote them (identity by content: the name may differ)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"input": self.input, "sha256": self.sha256, "run": self.run, "output": self.output}

    @classmethod
    def read(cls, table: Table) -> Link:
        """Read the JSON form, collecting problems (paths and the run id are checked: they name files)."""
        table.unknown(_keys("input", "sha256", "run", "output"))
        link = cls(table.text("input"), table.text("sha256", _SHA256), table.text("run", RUN_ID), table.text("output"))
        for name in (link.input, link.output):
            if name and (problem := relative_path_problem(name)):
                table.problems.append(f"{table.where[:-1]}: {problem}")
        return link


def read_links(data: object, where: str, problems: list[str]) -> tuple[Link, ...]:
    """The links part: a list of links (absent: none, as in records before version 5)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        problems.append(f"{where!r} must be a list, not {_shown(data)}")
        return ()
    return tuple(Link.read(Table(item, f"{where}[{index}].", problems)) for index, item in enumerate(data))


@dataclass(frozen=True)
class ParamsRecord:
    """A run's declared hyperparameters: the files they came from (sha256), those given on the command line, and
    the values the run got, key by key (the command line's over the files'; nested keys joined with dots)."""

    files: Mapping[str, str] = field(default_factory=dict)  # path → sha256
    given: Mapping[str, str] = field(default_factory=dict)  # --param KEY=VALUE, as given
    values: Mapping[str, str] = field(default_factory=dict)  # every key the run got

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"files": dict(self.files), "given": dict(self.given), "values": dict(self.values)}

    @classmethod
    def read(cls, table: Table) -> ParamsRecord:
        """Read the JSON form, collecting problems."""
        table.unknown(_keys("files", "given", "values"))
        files = table.text_table("files")
        for name, digest in files.items():
            if problem := relative_path_problem(name):
                table.problems.append(f"{table.where}'files': {problem}")
            if not _SHA256.fullmatch(digest):
                table.problems.append(f"{table.where}'files': {digest!r} is not a sha256")
        return cls(files, table.text_table("given"), table.text_table("values"))
