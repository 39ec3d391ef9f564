"""A GPU host checked without Docker: the NVML probe, each example lock's preflight, a native determinism test."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from envlock import __version__
from envlock.diagnostics.gpureport import (
    Arm,
    CrashedReport,
    DeterminismSection,
    Environment,
    Failure,
    GpuReport,
    HostSection,
    Outcome,
    PartStatus,
    PreflightCheck,
    PreflightSection,
    Refusal,
    Skipped,
    TorchInfo,
    TorchSection,
    TrainingRun,
    WeightsDiff,
    WeightsDiffError,
    WeightsDiffResult,
)
from envlock.engine.launch import determinism_env
from envlock.errors import EnvlockError
from envlock.fsutil import atomic_write_text, sha256_file
from envlock.paths import LOCK_FILE
from envlock.run.hostprobe import DRIVER_TRACES, HostState, Nvml, PynvmlAdapter, probe_host

# The lock reader and the preflight need `packaging`; they are imported where the preflight runs, so that a host
# without it still gets a report (with the probe and the determinism test) instead of an ImportError.
if TYPE_CHECKING:
    from envlock.lock.cuda import CudaStack

TORCH_EXAMPLE = "examples/torch-gpu"
# An architecture no GPU since Maxwell runs: the variant that must be refused for the host's architecture.
FOREIGN_ARCH = "sm_50"
_TAIL = 3000  # characters of a subprocess's output kept in the report
_MIN_SECONDS = 5.0  # a subprocess is not started with less time than this left
_SAID = 150  # characters of a refusal shown in the summary; the report has it whole


@dataclass
class Deadline:
    """The time the whole check may take: every subprocess's timeout is cut to what is left."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def timeout(self, wanted: float) -> float | None:
        """The timeout for the next subprocess, or None when too little time is left to start one."""
        left = self.seconds - (self.clock() - self.start)
        return min(wanted, left) if left >= _MIN_SECONDS else None


@dataclass(frozen=True)
class Training:
    """One training run into a folder: the command (with or without determinism), the file holding the weights, the
    seed it trains with and the seconds one run may take."""

    command: Callable[[Path, bool], list[str]]
    weights: str = "model.pt"
    seed: int = 0
    run_timeout: float = 90.0


def example_training(repo: Path, python: str, steps: int) -> Training:
    """examples/torch-gpu/train.py run natively; `--nondeterministic` lifts its deterministic-algorithms setting."""
    script = repo / TORCH_EXAMPLE / "train.py"

    def command(out: Path, deterministic: bool) -> list[str]:
        flags = [] if deterministic else ["--nondeterministic"]
        return [python, str(script), "--out", str(out), "--steps", str(steps), *flags]

    return Training(command)


# ---------------------------------------------------------------------------------------------------------------
# Sections. Each returns a typed section with a `status`; _guarded turns anything they raise into a Failure.


T = TypeVar("T")


def _guarded(section: Callable[[], T]) -> T | Failure:
    try:
        return section()
    except Exception as exc:  # noqa: BLE001  (every failure lands in the report; none ends the check without one)
        return Failure.of(exc)


def _distribution(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment(python: str, driver_traces: tuple[Path, ...] = DRIVER_TRACES) -> Environment:
    """The Python running the check, the one training, and the driver's traces the probe looks for first."""
    return Environment(
        python=platform.python_version(),
        python_executable=sys.executable,
        training_python=python,
        system=platform.platform(),
        machine=platform.machine(),
        nvidia_ml_py=_distribution("nvidia-ml-py"),
        # The adapter reports "no driver" without loading NVML when none of these exists: shown so a wrong
        # "no driver" on an unusual host (a sandbox, a VM) can be told from a real one.
        driver_traces={str(trace): trace.exists() for trace in driver_traces},
    )


def probe_section(nvml: Nvml | None) -> HostSection:
    """envlock's host probe as a run record holds it; a host without a usable driver is skipped, not an error."""
    host = probe_host(nvml, docker_version=lambda: None)  # the hosts this check is for have no Docker
    if host.is_gpu_host:
        return HostSection("passed", host)
    return HostSection("skipped", host, reason=host.nvml_error or f"driver {host.driver_version} reports no GPU")


_TORCH_PROBE = """
import json, sys
try:
    import torch
except ImportError as exc:
    print(json.dumps({"installed": False, "error": str(exc)}))
    sys.exit(0)
info = {"installed": True, "version": torch.__version__, "cuda": torch.version.cuda,
        "cuda-available": torch.cuda.is_available()}
if info["cuda-available"]:
    info["cudnn"] = torch.backends.cudnn.version()
    info["devices"] = [
        {"name": torch.cuda.get_device_name(i), "compute-capability": "%d.%d" % torch.cuda.get_device_capability(i)}
        for i in range(torch.cuda.device_count())
    ]
print(json.dumps(info))
"""


def _tail(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    return (output or "")[-_TAIL:]


def torch_section(python: str, deadline: Deadline, timeout: float = 90.0) -> TorchSection:
    """torch as the training Python sees it, asked in a subprocess (a crash there cannot take the report along)."""
    limit = deadline.timeout(timeout)
    if limit is None:
        return TorchSection("skipped", reason="the check's time budget was spent before torch was asked")
    try:
        done = subprocess.run(
            [python, "-c", _TORCH_PROBE], capture_output=True, text=True, errors="replace", timeout=limit, check=False
        )
    except OSError as exc:
        return TorchSection("error", error=f"cannot start {python}: {exc}")
    except subprocess.TimeoutExpired as exc:
        return TorchSection("error", error=f"importing torch took over {round(limit, 1):g} s", output=_tail(exc.stderr))
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return TorchSection("error", error=f"the torch probe exited {done.returncode}", output=_tail(done.stderr))
    return torch_status(python, TorchInfo.from_dict(json.loads(lines[-1])))


def torch_status(python: str, info: TorchInfo) -> TorchSection:
    """Passed with a CUDA GPU; skipped without torch or without CUDA."""
    if not info.installed:
        return TorchSection("skipped", info, reason=f"torch is not installed for {python}")
    if not info.cuda_available:
        return TorchSection("skipped", info, reason=f"torch {info.version} sees no CUDA GPU (CPU-only)")
    return TorchSection("passed", info)


# ---------------------------------------------------------------------------------------------------------------
# Preflight: the real locks, and two variants of each CUDA lock that this host must refuse.


@dataclass(frozen=True)
class PreflightCase:
    """One lock's stack (or a variant of it) to check against the host, and what the check expects of it."""

    lock: str
    variant: str | None
    stack: CudaStack
    expected: Outcome
    must_name: tuple[str, ...] = ()  # what a refusal has to say: the numbers, the architecture


def _major(version: str | None) -> int | None:
    try:
        return int((version or "").split(".")[0])
    except ValueError:
        return None


def preflight_cases(lock: str, stack: CudaStack, host: HostState) -> list[PreflightCase]:
    """The lock as it is (accepted where the host has a GPU it can use), plus for CUDA its two refused variants."""
    real = PreflightCase(lock, None, stack, "accepted" if stack.kind == "cpu" or host.is_gpu_host else "refused")
    if stack.kind == "cpu":
        return [real]
    major = _major(host.driver_version)
    floor = f"{major + 1}.0" if major is not None else "999.0"
    on_gpu = host.is_gpu_host and host.driver_version is not None
    newer_driver = PreflightCase(
        lock,
        f"driver floor raised to {floor}",
        replace(stack, driver_min=floor, driver_min_compat=floor),
        "refused",
        (str(host.driver_version), floor) if on_gpu else (),
    )
    foreign_arch = PreflightCase(
        lock,
        f"architectures [{FOREIGN_ARCH}] only",
        replace(stack, archs=(FOREIGN_ARCH,)),
        "refused",
        (FOREIGN_ARCH, *sorted({gpu.arch for gpu in host.gpus})) if on_gpu else (),
    )
    return [real, newer_driver, foreign_arch]


def check_case(case: PreflightCase, host: HostState, lock_hash: str | None = None) -> PreflightCheck:
    """Run the real preflight and its refusal (`enforce`, not forced) on one case; record the verdict."""
    from envlock.errors import PreflightError  # noqa: PLC0415
    from envlock.run.preflight import check_host, enforce  # noqa: PLC0415  (see the imports)

    verdict = check_host(case.stack, host)
    outcome: Outcome = "accepted" if verdict.ok else "refused"
    said = " ".join(verdict.problems)
    unnamed = tuple(word for word in case.must_name if word not in said)
    refusal = None
    try:
        enforce(verdict, force=False)
    except PreflightError as exc:
        refusal = Refusal(exc.message, exc.hint, exc.exit_code)
    return PreflightCheck(
        lock=case.lock,
        variant=case.variant,
        as_expected=outcome == case.expected and not unnamed,
        cuda=case.stack.as_dict(),
        verdict=outcome,
        problems=tuple(verdict.problems),
        warnings=tuple(verdict.warnings),
        expected=case.expected,
        refusal_does_not_name=unnamed,
        refusal=refusal,
        lock_hash=lock_hash,
    )


def preflight_section(repo: Path, host: HostState) -> PreflightSection:
    """Each example lock (examples/*/envlock.lock) and the CUDA locks' variants, checked against the host."""
    from envlock.lock import lockfile  # noqa: PLC0415  (see the imports)
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    target = host_platform()
    checks: list[PreflightCheck] = []
    for path in sorted((repo / "examples").glob(f"*/{LOCK_FILE}")):
        name = path.relative_to(repo).as_posix()
        try:
            lock = lockfile.read(path)
            stack = lock.target(target).cuda
        except EnvlockError as exc:
            checks.append(PreflightCheck(name, None, as_expected=False, error=exc.message))
            continue
        checks += [check_case(case, host, lock.lock_hash) for case in preflight_cases(name, stack, host)]
    if not checks:
        return PreflightSection("error", (), error=f"no example locks under {repo / 'examples'}")
    errors = any(check.error is not None for check in checks)
    status: PartStatus = "error" if errors else "passed" if all(c.as_expected for c in checks) else "failed"
    return PreflightSection(status, tuple(checks), platform=target)


# ---------------------------------------------------------------------------------------------------------------
# Determinism: the same training twice with envlock's settings, twice without, weights compared by sha256.

WeightsDiffer = Callable[[Path, Path], WeightsDiffResult]


def arm_environment(
    base: Mapping[str, str], deterministic: bool, seed: int, lock_hash: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of one arm, and what it sets: envlock's launch variables, or none of them at all."""
    envlock_names = determinism_env(seed, "", "")
    # Neither arm inherits the caller's own values of these: the difference between the arms is only envlock's.
    env = {name: value for name, value in base.items() if name not in envlock_names}
    settings = determinism_env(seed, "native (no image)", lock_hash) if deterministic else {}
    return {**env, **settings}, settings


def train_once(
    training: Training, out: Path, deterministic: bool, env: Mapping[str, str], timeout: float | None
) -> TrainingRun:
    """One training subprocess: exit code, seconds, the weights' sha256, or why there are none."""
    command = tuple(training.command(out, deterministic))
    if timeout is None:
        return TrainingRun(command, error="skipped: the check's time budget was spent")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=out,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        seconds = round(time.monotonic() - started, 2)
        error = f"timed out after {round(timeout, 1):g} s"
        return TrainingRun(command, seconds, output=_tail(exc.output), error=error, timed_out=True)
    except OSError as exc:
        return TrainingRun(command, error=f"cannot start it: {exc}")
    ran = TrainingRun(command, round(time.monotonic() - started, 2), done.returncode, _tail(done.stdout))
    weights = out / training.weights
    if done.returncode != 0:
        return replace(ran, error=f"exited {done.returncode}")
    if not weights.is_file():
        return replace(ran, error=f"wrote no {training.weights}")
    return replace(ran, sha256=sha256_file(weights))


def compare_runs(runs: Sequence[TrainingRun]) -> bool | None:
    """True when every run wrote weights with one sha256, False when they differ, None when a run gave none."""
    hashes = [run.sha256 for run in runs]
    if len(hashes) < 2 or None in hashes:
        return None
    return len(set(hashes)) == 1


def _interpretation(deterministic: bool | None, free: bool | None) -> str:
    if deterministic is None or free is None:
        return "incomplete: a run gave no weights (see the runs' errors)"
    if not deterministic:
        return "not reproducible even with envlock's settings: the weights differ between two identical runs"
    if free:
        return (
            "identical with and without envlock's settings: this training hit no nondeterministic kernel here "
            "(the settings guard against kernels it does not use)"
        )
    return "envlock's settings made the difference: identical with them, different without"


def determinism_section(
    training: Training,
    deadline: Deadline,
    *,
    seed: int = 0,
    lock_hash: str = "",
    run_timeout: float = 90.0,
    base_env: Mapping[str, str] | None = None,
    weights_diff: WeightsDiffer | None = None,
) -> DeterminismSection:
    """Train twice with envlock's determinism settings and twice without; compare the weights' sha256 per pair."""
    env_base = dict(os.environ if base_env is None else base_env)
    arms: list[Arm] = []
    with tempfile.TemporaryDirectory(prefix="envlock-gpu-check-") as scratch:
        for name, deterministic in (("deterministic", True), ("nondeterministic", False)):
            env, settings = arm_environment(env_base, deterministic, seed, lock_hash)
            outs = [Path(scratch, f"{name}-{n}") for n in (1, 2)]
            runs = tuple(train_once(training, out, deterministic, env, deadline.timeout(run_timeout)) for out in outs)
            identical = compare_runs(runs)
            differ = None
            if identical is False and weights_diff is not None:
                first, second = (out / training.weights for out in outs)
                differ = _guarded(lambda: weights_diff(first, second))  # noqa: B023  (called at once)
            arms.append(Arm(settings, runs, identical, differ))
    with_settings, without = arms[0].identical, arms[1].identical
    status: PartStatus = "error" if None in (with_settings, without) else "passed" if with_settings else "failed"
    return DeterminismSection(status, seed, arms[0], arms[1], _interpretation(with_settings, without))


_WEIGHTS_DIFF = """
import json, sys
import torch
first, second = (torch.load(path, map_location="cpu", weights_only=True) for path in sys.argv[1:3])
keys = sorted(set(first) | set(second))
diff = {key: (float((first[key].double() - second[key].double()).abs().max()) if key in first and key in second
              else None) for key in keys}
print(json.dumps({"tensors-equal": all(torch.equal(first[k], second[k]) for k in keys if k in first and k in second),
                  "max-abs-diff": diff}))
"""


def torch_weights_diff(python: str, deadline: Deadline, timeout: float = 60.0) -> WeightsDiffer:
    """Compares two state dicts tensor by tensor: a differing hash then says whether, and how far, the weights moved."""

    def diff(first: Path, second: Path) -> WeightsDiffResult:
        limit = deadline.timeout(timeout)
        if limit is None:
            return Skipped("the check's time budget was spent")
        done = subprocess.run(
            [python, "-c", _WEIGHTS_DIFF, str(first), str(second)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=limit,
            check=False,
        )
        if done.returncode != 0:
            return WeightsDiffError(f"exited {done.returncode}", _tail(done.stderr))
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return WeightsDiff(bool(result["tensors-equal"]), result.get("max-abs-diff"))

    return diff


# ---------------------------------------------------------------------------------------------------------------
# The whole check.


def gpu_check(
    nvml: Nvml | None,
    repo: Path,
    torch_info: Callable[[], TorchSection],
    training: Training,
    deadline: Deadline,
    *,
    environment: Environment | None = None,
    weights_diff: WeightsDiffer | None = None,
) -> GpuReport:
    """Every part of the check as one report; a part that cannot run says why, and nothing raises."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    host_section = _read_back(_guarded(lambda: probe_section(nvml)))
    # Read back as a run record would be: the report's host is exactly what `envlock run` records.
    torch = _guarded(torch_info)
    preflight: PreflightSection | Skipped | Failure
    if not isinstance(host_section, HostSection) or host_section.status == "error":
        preflight = Skipped("the host probe failed (see host)")
    else:
        host = host_section.host
        preflight = _guarded(lambda: preflight_section(repo, host))
    determinism: DeterminismSection | Skipped | Failure
    if torch.status != "passed":
        reason = (isinstance(torch, TorchSection | Skipped) and torch.reason) or torch_error(torch)
        determinism = Skipped(reason)
    else:
        lock_hash = _example_lock_hash(preflight)
        determinism = _guarded(
            lambda: determinism_section(
                training,
                deadline,
                seed=training.seed,
                lock_hash=lock_hash,
                run_timeout=training.run_timeout,
                weights_diff=weights_diff,
            )
        )
    return GpuReport(
        envlock_version=__version__,
        created=created,
        environment=environment,
        host=host_section,
        torch=torch,
        preflight=preflight,
        determinism=determinism,
        seconds=round(deadline.clock() - deadline.start, 1),
    )


def torch_error(torch: TorchSection | Skipped | Failure) -> str:
    """Why torch cannot train, when no reason was given: its error, else "torch unusable"."""
    return (not isinstance(torch, Skipped) and torch.error) or "torch unusable"


def _read_back(section: HostSection | Failure) -> HostSection | Failure:
    """The host section, an error when its record does not read back as a run record would."""
    if isinstance(section, Failure):
        return section
    try:
        HostState.from_dict(section.host.as_dict())
    except ValueError as exc:
        return replace(section, status="error", error=f"the host record does not read back: {exc}")
    return section


def _example_lock_hash(preflight: PreflightSection | Skipped | Failure) -> str:
    for check in preflight.checks if isinstance(preflight, PreflightSection) else ():
        if check.lock.startswith(TORCH_EXAMPLE + "/") and check.lock_hash is not None:
            return check.lock_hash
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Rendering and the entry point (scripts/gpu-check.sh).


def _host_line(section: HostSection | Failure) -> str:
    if isinstance(section, Failure) or section.status == "error":
        return f"error: {section.error}"
    host = section.host
    if not host.gpus:
        return f"no GPU: {section.reason}"
    gpus = "; ".join(
        f"GPU {g.index} {g.name} (sm_{g.compute_capability.replace('.', '')}, {g.memory_mib} MiB, "
        f"MIG {g.mig_mode}, ECC {g.ecc_mode})"
        for g in host.gpus
    )
    return f"driver {host.driver_version} (CUDA {host.cuda_driver_version}); {gpus}"


def _torch_line(section: TorchSection | Skipped | Failure) -> str:
    if isinstance(section, TorchSection) and section.status == "passed" and section.info is not None:
        devices = ", ".join(d.name for d in section.info.devices or ())
        return f"torch {section.info.version} (CUDA {section.info.cuda}): {devices}"
    return str((not isinstance(section, Failure) and section.reason) or torch_error(section))


def _preflight_lines(section: PreflightSection | Skipped | Failure) -> list[str]:
    if isinstance(section, Skipped):
        return [section.reason]
    if isinstance(section, Failure):
        return [section.error]
    checks = section.checks
    good = sum(1 for check in checks if check.as_expected)
    lines = [f"{good}/{len(checks)} verdicts as expected"]
    for check in checks:
        what = check.lock + (f" [{check.variant}]" if check.variant else "")
        mark = "ok  " if check.as_expected else "NOT "
        said = check.error or (check.problems[0] if check.problems else "")
        said = said if len(said) <= _SAID else said[: _SAID - 1] + "…"
        lines.append(f"  {mark}{check.verdict or 'error':8} {what}" + (f": {said}" if said else ""))
    return lines


def _determinism_lines(section: DeterminismSection | Skipped | Failure) -> list[str]:
    if isinstance(section, Skipped):
        return [section.reason]
    if isinstance(section, Failure):
        return [section.error]
    lines = []
    for arm, label in ((section.deterministic, "with envlock's settings"), (section.nondeterministic, "without")):
        seconds = " + ".join(f"{run.seconds:.1f} s" for run in arm.runs if run.seconds is not None)
        hashes = sorted({run.sha256[:12] for run in arm.runs if run.sha256})
        verdict = {True: "identical", False: "DIFFERENT", None: "incomplete"}[arm.identical]
        lines.append(f"{label:24} {verdict} (sha256 {', '.join(hashes) or '-'}; {seconds or '-'})")
    lines.append(section.interpretation)
    return lines


def summary_lines(report: GpuReport) -> list[str]:
    """The report in a few lines for a terminal."""
    lines = [f"envlock gpu-check ({report.seconds} s): {'all passed' if report.ok else 'see below'}"]
    parts: list[tuple[str, PartStatus, list[str]]] = [
        ("host", report.host.status, [_host_line(report.host)]),
        ("torch", report.torch.status, [_torch_line(report.torch)]),
        ("preflight", report.preflight.status, _preflight_lines(report.preflight)),
        ("determinism", report.determinism.status, _determinism_lines(report.determinism)),
    ]
    for name, status, body in parts:
        lines.append(f"{name:12} [{status}] {body[0]}")
        lines += [f"{'':12} {line}" for line in body[1:]]
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu-report.json"), help="the JSON report's path")
    parser.add_argument("--repo", type=Path, default=Path(), help="the envlock checkout (its examples/)")
    parser.add_argument("--python", default=sys.executable, help="the Python with torch that trains")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs with envlock's settings")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--run-timeout", type=float, default=90.0, help="seconds one training run may take")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds the whole check may take")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every part ran and passed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check, write the report, print a summary: 0 once the report is written (--strict: and all passed)."""
    args = _parser().parse_args(argv)
    repo = args.repo.resolve()
    deadline = Deadline(args.budget)
    report: GpuReport | CrashedReport
    try:
        report = gpu_check(
            PynvmlAdapter(),  # the one place the real adapter is made: tests call gpu_check with a fake
            repo,
            lambda: torch_section(args.python, deadline),
            replace(example_training(repo, args.python, args.steps), seed=args.seed, run_timeout=args.run_timeout),
            deadline,
            environment=describe_environment(args.python),
            weights_diff=torch_weights_diff(args.python, deadline),
        )
    except Exception as exc:  # noqa: BLE001  (a bug in the check itself still ends in a report)
        report = CrashedReport(Failure.of(exc))
    report = replace(report, strict=args.strict)
    out = args.out.absolute()
    text = json.dumps(report.as_dict(), indent=2)
    try:
        atomic_write_text(out, text + "\n")
    except OSError as exc:
        print(text)
        print(f"gpu-check: cannot write the report to {out}: {exc}", file=sys.stderr)
        return 2
    if isinstance(report, GpuReport):
        print("\n".join(summary_lines(report)))
    else:
        print(f"gpu-check: no summary ({report.failure.error}); see the report")
    print(f"report: {out}")
    return 1 if args.strict and not report.ok else 0


if __name__ == "__main__":
    sys.exit(main())
