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
from dataclasses import replace

from envlock.codecs import PATH_DIGESTS, Codec, field, one_of, project_path_problem
from envlock.engine.runtimes import RUNTIMES, RuntimeInfo
from envlock.run.gitstate import GitState

_HEX_COMMIT = re.compile(r"[0-9a-f]{1,64}")  # hex only: a recorded commit never reaches git as an option
SHA256 = re.compile(r"[0-9a-f]{64}")
RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")  # it names a folder: nothing else may pass
CHAIN_ID = re.compile(r"chain-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


def _path(value: str) -> str | None:
    return project_path_problem(value) if value else None  # an empty one is already a problem of its own


class GitRecord(Codec):
    """Where the code was: commit (None outside git), dirty flag, sha256 of the diff saved beside the record, the
    untracked files, and of those the ones copied into `.envlock/objects/` (by sha256) and the ones not (why)."""

    commit: str | None = field(pattern=_HEX_COMMIT, doc="the commit checked out (None outside git)")
    dirty: bool = field(doc="whether the worktree differed from the commit")
    diff_sha256: str | None = field(default=None, pattern=SHA256, doc="sha256 of diff.patch beside the record")
    untracked: tuple[str, ...] = field(default=(), doc="untracked files the run saw")
    saved: Mapping[str, str] = field(
        key="untracked-saved", default_factory=dict, check=PATH_DIGESTS, doc="untracked files copied (sha256)"
    )
    skipped: Mapping[str, str] = field(key="untracked-skipped", default_factory=dict, doc="untracked files not kept")

    @classmethod
    def of(cls, state: GitState) -> GitRecord:
        """The recorded form of a probed git state (the diff itself goes to diff.patch)."""
        saved, skipped = dict(state.saved), dict(state.skipped)
        return cls(state.commit, state.dirty, state.diff_sha256, state.untracked, saved, skipped)

    @property
    def unsaved(self) -> tuple[str, ...]:
        """Untracked files of which no copy was kept (over the cap, or recorded before envlock kept copies)."""
        return tuple(name for name in self.untracked if name not in self.saved)


class TrackingRequest(Codec):
    """The MLflow settings a batch job's node starts its run with (the URI without credentials)."""

    uri: str
    experiment: str
    reuse: str | None = None


class JobRequest(Codec):
    """What a queued run's node needs that the record does not already hold."""

    outputs: tuple[str, ...] = ()
    force: bool = False
    gpus: bool | None = None
    mlflow: TrackingRequest | None = None
    # What the node runs the image with (None: docker, as before version 3); written only when chosen: older
    # readers see the keys they know.
    runtime: str | None = field(default=None, omit_none=True, check=one_of(RUNTIMES))
    # The declared inputs (hashed on the node before the command starts), the --param values and the params files,
    # and --push (the node publishes a finished run): written only when asked for, like runtime.
    inputs: tuple[str, ...] | None = field(default=None, omit_none=True)
    params: dict[str, str] | None = field(default=None, omit_none=True)
    param_files: tuple[str, ...] | None = field(default=None, omit_none=True)
    push: bool | None = field(default=None, omit_none=True)


class JobRecord(Codec):
    """A batch job's facts: queued (kind, job id, sbatch options, request), then the node's, then Slurm's end.

    The node's and Slurm's facts are written only once known (absent until then)."""

    kind: str  # "slurm"
    job_id: str | None  # None only between the record's first write and sbatch's answer
    options: tuple[str, ...] = field(absent=())
    submitted: str
    request: JobRequest = field(absent=JobRequest())
    submit_host: str | None = field(default=None, omit_none=True)
    node: str | None = field(default=None, omit_none=True)  # Slurm's node name, on the node
    host: str | None = field(default=None, omit_none=True)  # the node's hostname (its container is removed there)
    rank: int | None = field(default=None, omit_none=True)
    nodes: str | None = field(default=None, omit_none=True)  # the job's node list, SLURM_JOB_NODELIST
    state: str | None = field(default=None, omit_none=True)  # Slurm's final state, when `envlock runs` closed it

    def at_node(self, node: str, host: str, rank: int, nodes: str) -> JobRecord:
        """These facts with the node's added."""
        return replace(self, node=node, host=host, rank=rank, nodes=nodes)


class TrackingRecord(Codec):
    """The MLflow run a run's metrics went to: the store (no credentials), the run, where to look at it."""

    uri: str
    run_id: str
    experiment_id: str
    link: str
    kind: str = field(default="mlflow", required=True)


class RuntimeRecord(Codec):
    """The container runtime that ran the command, and its version (None when it did not say)."""

    name: str = field(check=one_of(RUNTIMES))
    version: str | None

    @classmethod
    def of(cls, info: RuntimeInfo) -> RuntimeRecord:
        """The recorded form of a launcher's own account of itself."""
        return cls(info.name, info.version)


class Link(Codec):
    """One input found, by its content hash at the run's start, among an earlier run's outputs (version 5)."""

    input: str = field(check=_path)  # the input file, relative to the project
    sha256: str = field(pattern=SHA256)  # its content, hashed before the command started
    run: str = field(pattern=RUN_ID)  # the earlier run that wrote these bytes
    output: str = field(check=_path)  # under which name that run wrote them (identity by content: names may differ)


class ParamsRecord(Codec):
    """A run's declared hyperparameters: the files they came from (sha256), those given on the command line, and
    the values the run got, key by key (the command line's over the files'; nested keys joined with dots)."""

    files: Mapping[str, str] = field(default_factory=dict, check=PATH_DIGESTS)  # path → sha256
    given: Mapping[str, str] = field(default_factory=dict)  # --param KEY=VALUE, as given
    values: Mapping[str, str] = field(default_factory=dict)  # every key the run got
