"""The GPU check's report as typed values: one frozen class per section, each written to JSON by `as_dict`.

The JSON is the report file's format (`report-version` 1): keys, their order and their values are those the check
wrote when its sections were dicts, so readers of earlier reports read these unchanged.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from envlock.errors import EnvlockError
from envlock.run.hostprobe import HostState

REPORT_VERSION = 1
TOOL = "envlock gpu-check"
PartStatus = Literal["passed", "failed", "skipped", "error"]
Outcome = Literal["accepted", "refused"]
NO_SETTINGS = "none of envlock's variables (nondeterministic kernels allowed)"


def _present(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The pairs whose value is set (None: the key is left out, as the report always did)."""
    return {key: value for key, value in pairs if value is not None}


@dataclass(frozen=True)
class Failure:
    """A section that raised: the message (and hint) of an envlock error, or a bug's type, message and traceback."""

    error: str
    hint: str | None = None
    traceback: str | None = None
    status: PartStatus = "error"

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The failure a caught exception stands for (call inside its `except`: a bug keeps its traceback)."""
        if isinstance(exc, EnvlockError):
            return cls(exc.message, hint=exc.hint or None)
        hint = None
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            hint = f"the Python package providing {exc.name!r} is not installed for {sys.executable}"
        return cls(f"{type(exc).__name__}: {exc}", hint=hint, traceback=traceback.format_exc())

    def as_dict(self) -> dict[str, Any]:
        """{status, error, traceback?, hint?}."""
        return {"status": self.status, "error": self.error} | _present(
            (("traceback", self.traceback), ("hint", self.hint))
        )


@dataclass(frozen=True)
class Skipped:
    """A section that did not run, and why."""

    reason: str
    status: PartStatus = "skipped"

    def as_dict(self) -> dict[str, Any]:
        """{status, reason}."""
        return {"status": self.status, "reason": self.reason}


@dataclass(frozen=True)
class Environment:
    """The Python running the check, the one training, and the driver's traces the probe looks for first."""

    python: str
    python_executable: str
    training_python: str
    system: str
    machine: str
    nvidia_ml_py: str | None
    driver_traces: Mapping[str, bool]

    def as_dict(self) -> dict[str, Any]:
        """The environment's JSON."""
        return {
            "python": self.python,
            "python-executable": self.python_executable,
            "training-python": self.training_python,
            "system": self.system,
            "machine": self.machine,
            "nvidia-ml-py": self.nvidia_ml_py,
            "driver-traces": dict(self.driver_traces),
        }


@dataclass(frozen=True)
class HostSection:
    """envlock's host probe as a run record holds it; skipped (with the reason) on a host without a usable GPU."""

    status: PartStatus
    host: HostState
    reason: str | None = None
    error: str | None = None  # the record did not read back as a run record would

    def as_dict(self) -> dict[str, Any]:
        """{status, record, reason?, error?}."""
        return {"status": self.status, "record": self.host.as_dict()} | _present(
            (("reason", self.reason), ("error", self.error))
        )


@dataclass(frozen=True)
class TorchDevice:
    """A CUDA device as torch names it."""

    name: str
    compute_capability: str

    def as_dict(self) -> dict[str, Any]:
        """{name, compute-capability}."""
        return {"name": self.name, "compute-capability": self.compute_capability}


@dataclass(frozen=True)
class TorchInfo:
    """What the training Python's torch says about itself (the torch probe's JSON)."""

    installed: bool
    import_error: str | None = None
    version: str | None = None
    cuda: str | None = None
    cuda_available: bool | None = None
    cudnn: int | None = None
    devices: tuple[TorchDevice, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TorchInfo:
        """The probe's JSON line read back; a key of the wrong type is a ValueError."""
        devices = data.get("devices")
        if devices is not None and not isinstance(devices, list):
            raise ValueError(f"torch probe: devices is {devices!r}")
        return cls(
            installed=bool(data.get("installed")),
            import_error=_optional(data, "error", str),
            version=_optional(data, "version", str),
            cuda=_optional(data, "cuda", str),
            cuda_available=_optional(data, "cuda-available", bool),
            cudnn=_optional(data, "cudnn", int),
            devices=None
            if devices is None
            else tuple(TorchDevice(str(d["name"]), str(d["compute-capability"])) for d in devices),
        )

    def as_dict(self) -> dict[str, Any]:
        """The probe's JSON, as it printed it."""
        if not self.installed:
            return {"installed": False, **_present((("error", self.import_error),))}
        return {
            "installed": True,
            "version": self.version,
            "cuda": self.cuda,
            "cuda-available": self.cuda_available,
            **_present((("cudnn", self.cudnn),)),
            **({} if self.devices is None else {"devices": [d.as_dict() for d in self.devices]}),
        }


def _optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"torch probe: {key} is {value!r}, not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class TorchSection:
    """torch as the training Python sees it: passed (a CUDA GPU), skipped (no torch, CPU only) or an error."""

    status: PartStatus
    info: TorchInfo | None = None
    reason: str | None = None
    error: str | None = None
    output: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """{status, reason?, error?, output?, the probe's keys…}."""
        told = _present((("reason", self.reason), ("error", self.error), ("output", self.output)))
        return {"status": self.status, **told, **(self.info.as_dict() if self.info else {})}


@dataclass(frozen=True)
class Refusal:
    """What `envlock run` would print when it refuses the host, and its exit code."""

    message: str
    hint: str
    exit_code: int

    def as_dict(self) -> dict[str, Any]:
        """{message, hint, exit-code}."""
        return {"message": self.message, "hint": self.hint, "exit-code": self.exit_code}


@dataclass(frozen=True)
class PreflightCheck:
    """One lock (or a variant of it) checked against the host: the verdict, and whether it is the one expected."""

    lock: str
    variant: str | None
    as_expected: bool
    cuda: Mapping[str, Any] | None = None  # the stack checked, as the lock writes it
    verdict: Outcome | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    expected: Outcome | None = None
    refusal_does_not_name: tuple[str, ...] = ()
    refusal: Refusal | None = None
    lock_hash: str | None = None
    error: str | None = None  # the lock could not be read: nothing was checked

    def as_dict(self) -> dict[str, Any]:
        """A checked case's JSON, or {lock, variant, error, as-expected} for a lock that cannot be read."""
        if self.error is not None:
            return {"lock": self.lock, "variant": self.variant, "error": self.error, "as-expected": self.as_expected}
        entry: dict[str, Any] = {
            "lock": self.lock,
            "variant": self.variant,
            "cuda": dict(self.cuda or {}),
            "verdict": self.verdict,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "expected": self.expected,
            "as-expected": self.as_expected,
        }
        if self.refusal_does_not_name:
            entry["refusal-does-not-name"] = list(self.refusal_does_not_name)
        if self.refusal is not None:
            entry["refusal"] = self.refusal.as_dict()
        return entry | _present((("lock-hash", self.lock_hash),))


@dataclass(frozen=True)
class PreflightSection:
    """Each example lock and the CUDA locks' variants, checked against the host (error: none to check)."""

    status: PartStatus
    checks: tuple[PreflightCheck, ...]
    platform: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """{status, platform, checks} or {status, error, checks}."""
        head = {"error": self.error} if self.error is not None else {"platform": self.platform}
        return {"status": self.status, **head, "checks": [check.as_dict() for check in self.checks]}


@dataclass(frozen=True)
class TrainingRun:
    """One training subprocess: its command, and its exit code, seconds and weights' sha256, or why there are none."""

    command: tuple[str, ...]
    seconds: float | None = None
    exit_code: int | None = None
    output: str | None = None
    error: str | None = None
    sha256: str | None = None
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The run's JSON (a run stopped by its timeout lists its error first, as the report always did)."""
        order: tuple[tuple[str, Any], ...]
        if self.timed_out:
            order = (("error", self.error), ("output", self.output), ("seconds", self.seconds))
        else:
            order = (
                ("seconds", self.seconds),
                ("exit-code", self.exit_code),
                ("output", self.output),
                ("error", self.error),
                ("sha256", self.sha256),
            )
        return {"command": list(self.command), **_present(order)}


@dataclass(frozen=True)
class WeightsDiff:
    """Two state dicts compared tensor by tensor: equal or not, and the largest difference per tensor."""

    tensors_equal: bool
    max_abs_diff: Mapping[str, float | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """{tensors-equal, max-abs-diff?}."""
        diff = None if self.max_abs_diff is None else dict(self.max_abs_diff)
        return {"tensors-equal": self.tensors_equal, **_present((("max-abs-diff", diff),))}


@dataclass(frozen=True)
class WeightsDiffError:
    """The tensor-by-tensor comparison did not finish."""

    error: str
    output: str
    status: PartStatus = "error"

    def as_dict(self) -> dict[str, Any]:
        """{status, error, output}."""
        return {"status": self.status, "error": self.error, "output": self.output}


WeightsDiffResult = WeightsDiff | WeightsDiffError | Skipped | Failure


@dataclass(frozen=True)
class Arm:
    """One arm of the determinism test: the variables it set, its two runs, and whether their weights agree."""

    settings: Mapping[str, str]
    runs: tuple[TrainingRun, ...]
    identical: bool | None
    weights_diff: WeightsDiffResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """{sets, runs, identical, weights-diff?}."""
        arm: dict[str, Any] = {
            "sets": dict(self.settings) or NO_SETTINGS,
            "runs": [run.as_dict() for run in self.runs],
            "identical": self.identical,
        }
        if self.weights_diff is not None:
            arm["weights-diff"] = self.weights_diff.as_dict()
        return arm


@dataclass(frozen=True)
class DeterminismSection:
    """The same training twice with envlock's settings and twice without, and what the pairs of weights say."""

    status: PartStatus
    seed: int
    deterministic: Arm
    nondeterministic: Arm
    interpretation: str

    def as_dict(self) -> dict[str, Any]:
        """{status, seed, deterministic, nondeterministic, interpretation}."""
        return {
            "status": self.status,
            "seed": self.seed,
            "deterministic": self.deterministic.as_dict(),
            "nondeterministic": self.nondeterministic.as_dict(),
            "interpretation": self.interpretation,
        }


@dataclass(frozen=True)
class GpuReport:
    """Every part of the check; `ok` when each part ran and passed."""

    envlock_version: str
    created: str
    environment: Environment | None
    host: HostSection | Failure
    torch: TorchSection | Skipped | Failure
    preflight: PreflightSection | Skipped | Failure
    determinism: DeterminismSection | Skipped | Failure
    seconds: float
    strict: bool | None = None  # set by the command line (--strict)

    @property
    def ok(self) -> bool:
        """Every part ran and passed."""
        return all(part.status == "passed" for part in (self.host, self.torch, self.preflight, self.determinism))

    def as_dict(self) -> dict[str, Any]:
        """The report file's JSON."""
        return {
            "report-version": REPORT_VERSION,
            "tool": TOOL,
            "envlock-version": self.envlock_version,
            "created": self.created,
            "environment": self.environment.as_dict() if self.environment else {},
            "host": self.host.as_dict(),
            "torch": self.torch.as_dict(),
            "preflight": self.preflight.as_dict(),
            "determinism": self.determinism.as_dict(),
            "ok": self.ok,
            "seconds": self.seconds,
        } | _present((("strict", self.strict),))


@dataclass(frozen=True)
class CrashedReport:
    """The check itself failed (a bug): the report says so instead of leaving none."""

    failure: Failure
    strict: bool | None = None

    @property
    def ok(self) -> bool:
        """Never: the check did not finish."""
        return False

    def as_dict(self) -> dict[str, Any]:
        """{report-version, tool, ok, status, error, …, strict}."""
        return {"report-version": REPORT_VERSION, "tool": TOOL, "ok": False, **self.failure.as_dict()} | _present(
            (("strict", self.strict),)
        )
