"""Can this host run the lock's stack? Driver floor and GPU architectures, checked before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from envlock.errors import PreflightError
from envlock.lock.cuda import UNKNOWN, CudaStack
from envlock.run.hostprobe import Gpu, HostState

_ARCH = re.compile(r"^sm_(\d+)(\d)$")  # the last digit is the minor: sm_86 is 8.6, sm_120 is 12.0
_MINOR_COMPAT_LIMITS = "PTX newer than the driver will not JIT and some APIs need the full driver"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a preflight: refusals (problems) and things worth knowing (warnings), one line each."""

    ok: bool
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    hint: str | None = None  # what to do instead, when the refusal has a better answer than --force


def _numbers(version: str) -> tuple[int, ...] | None:
    # Driver versions compare numerically: 535.104.05 is newer than 535.54.03.
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def _capability(arch: str) -> tuple[int, int] | None:
    # Arch-specific targets (sm_90a) and PTX (compute_90) do not match and run only where exactly listed.
    match = _ARCH.match(arch)
    return (int(match[1]), int(match[2])) if match else None


def _describe(stack: CudaStack) -> str:
    return f"CUDA {stack.version}" if stack.version != UNKNOWN else "a CUDA stack of unknown version"


def _supports(host: HostState) -> str:
    return f" (the driver supports CUDA up to {host.cuda_driver_version})" if host.cuda_driver_version else ""


def _no_gpu(stack: CudaStack, host: HostState) -> str:
    needs = f"needs driver >= {stack.driver_min}" if stack.driver_min != UNKNOWN else "its driver floor is unknown"
    if host.driver_version is not None:
        why = f"; driver {host.driver_version} reports no GPU"
    elif host.nvml_error:
        why = f"; {host.nvml_error}"
    else:
        why = ""
    return f"this host has no NVIDIA driver/GPU, but the lock's stack is {_describe(stack)} ({needs}){why}"


# On a host without GPUs the run can still be honest: --no-gpus runs it on the CPU and says so in the record.
NO_GPU_HINT = (
    "run it on the CPU with --no-gpus (the record says its CUDA code paths were not exercised), or on a GPU host; "
    "--force runs it anyway and marks the record forced"
)


def _check_driver(stack: CudaStack, driver: str, host: HostState) -> tuple[list[str], list[str]]:
    cuda = _describe(stack)
    family = f"CUDA {stack.version.split('.', maxsplit=1)[0]}.x"
    full, compat = stack.driver_min, stack.driver_min_compat
    have = _numbers(driver)
    full_at = _numbers(full) if full != UNKNOWN else None
    compat_at = _numbers(compat) if compat != UNKNOWN else None
    problems: list[str] = []
    warnings: list[str] = []
    if have is None:
        warnings.append(f"host driver version {driver!r} is not numeric; it was not checked against {cuda}")
    elif full_at is not None and have >= full_at:
        pass
    elif compat_at is not None and have < compat_at:
        below_full = f"older than {full}, the minimum for {cuda} (full compatibility), and " if full_at else ""
        problems.append(
            f"host driver {driver} is {below_full}older than {compat}, the minimum for any {family} "
            f"(minor-version compatibility){_supports(host)}"
        )
    elif full_at is not None and compat_at is not None:
        warnings.append(
            f"host driver {driver} is older than {full}, the minimum for {cuda} (full compatibility); "
            f"it is >= {compat}, so it runs under minor-version compatibility only: {_MINOR_COMPAT_LIMITS}"
        )
    elif full_at is not None:
        warnings.append(
            f"host driver {driver} is older than {full}, the minimum for {cuda} (full compatibility), and the "
            f"minor-version compatibility floor for {family} is unknown: it may not run{_supports(host)}"
        )
    elif compat_at is not None:
        warnings.append(
            f"the minimum driver for {cuda} (full compatibility) is unknown; host driver {driver} is >= {compat}, "
            f"so it runs at least under minor-version compatibility ({_MINOR_COMPAT_LIMITS}){_supports(host)}"
        )
    else:
        warnings.append(
            f"the minimum driver for {cuda} is unknown; host driver {driver} was not checked{_supports(host)}"
        )
    return problems, warnings


def _check_gpu(gpu: Gpu, archs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    if gpu.arch in archs:
        return [], []
    listed = ", ".join(archs)
    who = f"GPU {gpu.index} ({gpu.name}, {gpu.arch}) is not among the lock's architectures {listed}"
    have = _capability(gpu.arch)
    built = [c for c in (_capability(arch) for arch in archs) if c is not None]
    # CUDA binaries run on any GPU of the same major with an equal or higher minor: sm_89 runs sm_86 code.
    runnable = [c for c in built if have is not None and c[0] == have[0] and c[1] < have[1]]
    if runnable:
        major, minor = max(runnable)
        return [], [f"{who}; it runs the sm_{major}{minor} code (same major architecture, binary compatible)"]
    newer = have is not None and bool(built) and have[0] > max(major for major, _ in built)
    why = "newer than every architecture the lock was built for" if newer else "no code in the lock runs on it"
    return [f"{who}: {why}"], []


def check_host(stack: CudaStack, host: HostState) -> Verdict:
    """Whether the host can run the stack; every problem and warning at once, each with its numbers."""
    if stack.kind == "cpu":
        return Verdict(ok=True)  # GPUs on the host are simply unused
    if not host.is_gpu_host or host.driver_version is None:
        return Verdict(ok=False, problems=(_no_gpu(stack, host),), hint=NO_GPU_HINT)
    problems, warnings = _check_driver(stack, host.driver_version, host)
    if not stack.archs:
        found = ", ".join(f"GPU {gpu.index} {gpu.arch}" for gpu in host.gpus)
        warnings.append(f"the lock's GPU architectures are unknown; {found} not checked")
    else:
        for gpu in host.gpus:
            refused, noted = _check_gpu(gpu, stack.archs)
            problems += refused
            warnings += noted
    return Verdict(ok=not problems, problems=tuple(problems), warnings=tuple(warnings))


def without_gpus(stack: CudaStack) -> str:
    """The note for a CUDA lock run with --no-gpus: allowed on any host, the driver floor named for later."""
    needs = f"driver >= {stack.driver_min}" if stack.driver_min != UNKNOWN else "a driver of unknown floor"
    return (
        f"--no-gpus: the lock's stack is {_describe(stack)} (it needs {needs} on a GPU host); the command runs on "
        "the CPU, its CUDA code paths are not exercised"
    )


@dataclass(frozen=True)
class Preflight:
    """What a run records of its preflight: the notes, one line each, and whether --force overrode a refusal."""

    notes: tuple[str, ...] = ()
    forced: bool = False


def enforce(verdict: Verdict, force: bool) -> Preflight:
    """Raise PreflightError on problems unless forced; the notes for the run record (forced ones marked)."""
    if verdict.ok:
        return Preflight(verdict.warnings)
    if not force:
        message = verdict.problems[0] if verdict.problems else "the host failed the preflight"
        raise PreflightError(message, hint=verdict.hint or "", details=verdict.problems[1:])
    return Preflight(verdict.warnings + tuple(f"forced: {problem}" for problem in verdict.problems), forced=True)
