"""MLflow: the run envlock starts (or reuses) for a launch, tagged with the stack, continued inside the container.

The container gets MLFLOW_TRACKING_URI and MLFLOW_RUN_ID, so the training code's own `mlflow.start_run()` resumes
that run instead of making another. Where the container reaches the store: an http(s) server as it is (a loopback
server through the host's network), a file store mounted at the same path. envlock ends the run with the
command's outcome (the client inside marks it FINISHED even after `sys.exit(2)`, and never ends it when killed).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from envlock.errors import TrackingError, UsageError
from envlock.lock.credentials import redact
from envlock.lock.cuda import CudaStack
from envlock.run.hostprobe import gpu_summary
from envlock.run.records import RunRecord
from envlock.run.schema import TrackingRecord

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass(frozen=True)
class TrackingTarget:
    """A tracking URI and how a container reaches it."""

    uri: str
    mount: Path | None = None  # a file store: bind-mounted at the same path
    host_network: bool = False  # a server on the host's loopback: the container shares the host's network

    @property
    def environment(self) -> dict[str, str]:
        """What the container needs besides the run id."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if self.mount is not None:
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores unless asked
        return env


def tracking_target(uri: str) -> TrackingTarget:
    """Check that a container can reach the store at `uri`; refuse what it cannot, saying what would work."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return TrackingTarget(uri, host_network=(parts.hostname or "") in LOOPBACK)
    if scheme in ("", "file"):
        path = Path(parts.path if scheme == "file" else uri).expanduser()
        if not path.is_absolute():
            path = path.resolve()
        return TrackingTarget(path.as_uri(), mount=path)
    if scheme == "databricks":
        return TrackingTarget(uri)
    raise TrackingError(
        f"tracking URI {redact(uri)!r} ({scheme}) cannot be reached from inside a container",
        hint="serve the store and use its URL: mlflow server --backend-store-uri sqlite:///mlflow.db, "
        "then --mlflow http://127.0.0.1:5000",
    )


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a launch reports into."""

    target: TrackingTarget
    run_id: str
    experiment_id: str

    @property
    def environment(self) -> dict[str, str]:
        """The variables that make the container's `mlflow.start_run()` continue this run."""
        return {**self.target.environment, "MLFLOW_RUN_ID": self.run_id, "MLFLOW_EXPERIMENT_ID": self.experiment_id}

    @property
    def link(self) -> str:
        """Where to look at the run: its page on a tracking server, else the store and run id."""
        uri = redact(self.target.uri).rstrip("/")
        if uri.startswith(("http://", "https://")):
            return f"{uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{uri} run {self.run_id}"

    def recorded(self) -> TrackingRecord:
        """For the run record (the URI without credentials)."""
        return TrackingRecord(redact(self.target.uri), self.run_id, self.experiment_id, self.link)


# Credentials and settings of the MLflow client: passed into the container by name when set (values never recorded).
CLIENT_SETTINGS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "DATABRICKS_HOST",
    "DATABRICKS_TOKEN",
)


HOST_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class Tracker(Protocol):
    """Starts and ends tracking runs (MLflow through its client; a fake in unit tests)."""

    def start(self, experiment: str, run_name: str, reuse: str | None, tags: Mapping[str, str]) -> TrackedRun:
        """Create a run in `experiment` (made when missing) or reuse the run `reuse`; tag it."""
        ...

    def finish(self, run: TrackedRun, status: str) -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        ...

    def check(self) -> None:
        """Fail now (TrackingError) when the store cannot be reached or used."""
        ...


class MlflowTracker:
    """Tracker through mlflow's MlflowClient (mlflow-skinny is enough: envlock[mlflow])."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target
        try:
            from mlflow.tracking import MlflowClient  # noqa: PLC0415
        except ImportError as exc:
            raise TrackingError(
                "MLflow tracking needs the mlflow client, which is not installed",
                hint="install mlflow-skinny where envlock runs (its mlflow extra: pip install -e '.[mlflow]' in "
                "envlock's checkout), or run with --no-mlflow",
            ) from exc
        if target.mount is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # envlock's own calls (not the container's): a dead server is reported in seconds, not after the
        # client's default 7 retries with exponential backoff (4 minutes, measured).
        for name, value in HOST_CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.client = MlflowClient(tracking_uri=target.uri)

    def _call(self, what: str, action: Any) -> Any:
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        where = f"MLflow at {redact(self.target.uri)}"
        try:
            return action()
        except MlflowException as exc:
            text = str(exc.message if hasattr(exc, "message") else exc)
            if "Max retries exceeded" in text or "Failed to establish" in text:
                cause = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
                raise TrackingError(f"{where} is unreachable: {cause.group(1) if cause else 'no answer'}") from exc
            first = text.strip().splitlines()
            raise TrackingError(f"{where}: {what}: {first[0] if first else exc.__class__.__name__}") from exc
        except OSError as exc:  # DNS, disk (a file store)
            raise TrackingError(f"{where} is unreachable: {what}: {exc}") from exc

    def check(self) -> None:
        """Ask the store once, so an unreachable one fails before anything is built or run."""
        self._call("list experiments", lambda: self.client.search_experiments(max_results=1))

    def start(self, experiment: str, run_name: str, reuse: str | None, tags: Mapping[str, str]) -> TrackedRun:
        """Create or reuse the run, then tag it (tags overwrite: a reused run says what ran last)."""
        client = self.client
        if reuse:
            run = self._call(f"find run {reuse}", lambda: client.get_run(reuse))
            experiment_id = str(run.info.experiment_id)
            run_id = str(run.info.run_id)
        else:
            found = self._call(f"find experiment {experiment!r}", lambda: client.get_experiment_by_name(experiment))
            if found is None:
                experiment_id = str(
                    self._call(f"create experiment {experiment!r}", lambda: client.create_experiment(experiment))
                )
            else:
                experiment_id = str(found.experiment_id)
            run = self._call("create a run", lambda: client.create_run(experiment_id, run_name=run_name))
            run_id = str(run.info.run_id)
        for key, value in tags.items():
            self._call(f"tag run {run_id}", lambda k=key, v=value: client.set_tag(run_id, k, v))
        return TrackedRun(self.target, run_id, experiment_id)

    def finish(self, run: TrackedRun, status: str) -> None:
        """Set the run's final status (quietly: the client prints links to stdout, which is the command's)."""
        with contextlib.redirect_stdout(io.StringIO()):
            self._call(f"end run {run.run_id}", lambda: self.client.set_terminated(run.run_id, status=status))


@dataclass(frozen=True)
class Tracking:
    """What a launch reports into: the tracker, the experiment (by name) or a run to reuse."""

    tracker: Tracker
    experiment: str
    reuse: str | None = None


def status_of(record: RunRecord) -> str:
    """MLflow's run status for a run as its record ended it."""
    if record.status == "interrupted":
        return "KILLED"
    return "FINISHED" if record.status == "finished" and record.exit_code == 0 else "FAILED"


def stack_tags(record: RunRecord, cuda: CudaStack) -> dict[str, str]:
    """The tags that say which software and hardware produced the run's metrics: the record as it starts, and the
    lock's CUDA stack for its platform."""
    stack: Mapping[str, Any] = cuda.as_dict()
    host, git, scheduler = record.host, record.git, record.scheduler
    tags = {
        "envlock.run_id": record.run_id,
        "envlock.image.id": record.image_id,
        "envlock.image.digest": record.repo_digests[-1] if record.repo_digests else record.image_id,
        "envlock.lock_hash": record.lock_hash,
        "envlock.platform": record.platform,
        "envlock.seed": str(record.seed),
        "envlock.command": " ".join(record.command),
        "envlock.cuda": str(stack.get("version") or stack.get("kind") or "cpu"),
        "envlock.host.driver": (host.driver_version if host else None) or "none",
        "envlock.host.gpus": gpu_summary(host.gpus if host else ()),
    }
    for field in ("runtime", "cudnn", "nccl", "cublas", "driver-min", "driver-min-compat"):
        if stack.get(field):
            tags[f"envlock.cuda.{field.replace('-', '_')}"] = str(stack[field])
    archs = stack.get("archs")
    if archs:
        tags["envlock.cuda.archs"] = ",".join(archs) if isinstance(archs, list | tuple) else str(archs)
    if scheduler and scheduler.job_id:
        tags[f"envlock.{scheduler.kind}.job_id"] = scheduler.job_id
    if git and git.commit:
        tags["mlflow.source.git.commit"] = git.commit
        tags["envlock.git.dirty"] = str(git.dirty).lower()
    return tags


@dataclass(frozen=True)
class TrackingSettings:
    """Where a run is tracked: the URI, the experiment, and an MLflow run to continue (MLFLOW_RUN_ID)."""

    uri: str
    experiment: str
    reuse: str | None = None


def tracking_settings(
    uri: str | None, off: bool, project_name: str, environ: Mapping[str, str]
) -> TrackingSettings | None:
    """Where to track, from --mlflow / --no-mlflow and MLflow's own variables; None: no tracking."""
    if uri and off:
        raise UsageError("--mlflow and --no-mlflow contradict each other", hint="give one of them")
    chosen = None if off else uri or environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return None
    return TrackingSettings(chosen, environ.get("MLFLOW_EXPERIMENT_NAME") or project_name, environ.get("MLFLOW_RUN_ID"))


def open_tracking(settings: TrackingSettings | None, tracker_for: Callable[[str], Tracker]) -> Tracking | None:
    """The tracker for these settings, checked up front: an unusable URI fails before anything is built or run."""
    if settings is None:
        return None
    tracker = tracker_for(settings.uri)
    tracker.check()
    return Tracking(tracker, settings.experiment, settings.reuse)
