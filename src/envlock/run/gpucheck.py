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
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from envlock import __version__
from envlock.engine.launch import determinism_env
from envlock.errors import EnvlockError
from envlock.fsutil import atomic_write_text, sha256_file
from envlock.paths import LOCK_FILE
from envlock.run.hostprobe import DRIVER_TRACES, HostState, Nvml, PynvmlAdapter, probe_host

# The lock reader and the preflight need `packaging`; they are imported where the preflight runs, so that a host
# without it still gets a report (with the probe and the determinism test) instead of an ImportError.
if TYPE_CHECKING:
    from envlock.lock.cuda import CudaStack

REPORT_VERSION = 1
Status = Literal["passed", "failed", "skipped", "error"]
Outcome = Literal["accepted", "refused"]
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
    """One training run into a folder: the command (with or without determinism) and the file holding the weights."""

    command: Callable[[Path, bool], list[str]]
    weights: str = "model.pt"


def example_training(repo: Path, python: str, steps: int) -> Training:
    """examples/torch-gpu/train.py run natively; `--nondeterministic` lifts its deterministic-algorithms setting."""
    script = repo / TORCH_EXAMPLE / "train.py"

    def command(out: Path, deterministic: bool) -> list[str]:
        flags = [] if deterministic else ["--nondeterministic"]
        return [python, str(script), "--out", str(out), "--steps", str(steps), *flags]

    return Training(command)


# ---------------------------------------------------------------------------------------------------------------
# Sections. Each returns a JSON-able dict with a `status`; _guarded turns anything they raise into an error entry.


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, EnvlockError):
        entry: dict[str, Any] = {"status": "error", "error": exc.message}
        if exc.hint:
            entry["hint"] = exc.hint
        return entry
    entry = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        entry["hint"] = f"the Python package providing {exc.name!r} is not installed for {sys.executable}"
    return entry


def _guarded(section: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return section()
    except Exception as exc:  # noqa: BLE001  (every failure lands in the report; none ends the check without one)
        return _failure(exc)


def _distribution(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment(python: str, driver_traces: tuple[Path, ...] = DRIVER_TRACES) -> dict[str, Any]:
    """The Python running the check, the one training, and the driver's traces the probe looks for first."""
    return {
        "python": platform.python_version(),
        "python-executable": sys.executable,
        "training-python": python,
        "system": platform.platform(),
        "machine": platform.machine(),
        "nvidia-ml-py": _distribution("nvidia-ml-py"),
        # The adapter reports "no driver" without loading NVML when none of these exists: shown so a wrong
        # "no driver" on an unusual host (a sandbox, a VM) can be told from a real one.
        "driver-traces": {str(trace): trace.exists() for trace in driver_traces},
    }


def probe_section(nvml: Nvml | None) -> dict[str, Any]:
    """envlock's host probe as a run record holds it; a host without a usable driver is skipped, not an error."""
    host = probe_host(nvml, docker_version=lambda: None)  # the hosts this check is for have no Docker
    section: dict[str, Any] = {"status": "passed" if host.is_gpu_host else "skipped", "record": host.as_dict()}
    if not host.is_gpu_host:
        section["reason"] = host.nvml_error or f"driver {host.driver_version} reports no GPU"
    return section


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


def torch_section(python: str, deadline: Deadline, timeout: float = 90.0) -> dict[str, Any]:
    """torch as the training Python sees it, asked in a subprocess (a crash there cannot take the report along)."""
    limit = deadline.timeout(timeout)
    if limit is None:
        return {"status": "skipped", "reason": "the check's time budget was spent before torch was asked"}
    try:
        done = subprocess.run(
            [python, "-c", _TORCH_PROBE], capture_output=True, text=True, errors="replace", timeout=limit, check=False
        )
    except OSError as exc:
        return {"status": "error", "error": f"cannot start {python}: {exc}"}
    except subprocess.TimeoutExpired as exc:
        return {
            "status": "error",
            "error": f"importing torch took over {round(limit, 1):g} s",
            "output": _tail(exc.stderr),
        }
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"status": "error", "error": f"the torch probe exited {done.returncode}", "output": _tail(done.stderr)}
    return _torch_status(python, json.loads(lines[-1]))


def _torch_status(python: str, info: dict[str, Any]) -> dict[str, Any]:
    if not info.get("installed"):
        return {"status": "skipped", "reason": f"torch is not installed for {python}", **info}
    if not info.get("cuda-available"):
        return {"status": "skipped", "reason": f"torch {info.get('version')} sees no CUDA GPU (CPU-only)", **info}
    return {"status": "passed", **info}


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


def check_case(case: PreflightCase, host: HostState) -> dict[str, Any]:
    """Run the real preflight and its refusal (`enforce`, not forced) on one case; record the verdict."""
    from envlock.errors import PreflightError  # noqa: PLC0415
    from envlock.run.preflight import check_host, enforce  # noqa: PLC0415  (see the imports)

    verdict = check_host(case.stack, host)
    outcome: Outcome = "accepted" if verdict.ok else "refused"
    said = " ".join(verdict.problems)
    unnamed = [word for word in case.must_name if word not in said]
    entry: dict[str, Any] = {
        "lock": case.lock,
        "variant": case.variant,
        "cuda": case.stack.as_dict(),
        "verdict": outcome,
        "problems": list(verdict.problems),
        "warnings": list(verdict.warnings),
        "expected": case.expected,
        "as-expected": outcome == case.expected and not unnamed,
    }
    if unnamed:
        entry["refusal-does-not-name"] = unnamed
    try:
        enforce(verdict, force=False)
    except PreflightError as exc:
        entry["refusal"] = {"message": exc.message, "hint": exc.hint, "exit-code": exc.exit_code}
    return entry


def preflight_section(repo: Path, host: HostState) -> dict[str, Any]:
    """Each example lock (examples/*/envlock.lock) and the CUDA locks' variants, checked against the host."""
    from envlock.lock import lockfile  # noqa: PLC0415  (see the imports)
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    target = host_platform()
    checks: list[dict[str, Any]] = []
    for path in sorted((repo / "examples").glob(f"*/{LOCK_FILE}")):
        name = path.relative_to(repo).as_posix()
        try:
            lock = lockfile.read(path)
            stack = lock.target(target).cuda
        except EnvlockError as exc:
            checks.append({"lock": name, "variant": None, "error": exc.message, "as-expected": False})
            continue
        for case in preflight_cases(name, stack, host):
            checks.append({**check_case(case, host), "lock-hash": lock.lock_hash})
    if not checks:
        return {"status": "error", "error": f"no example locks under {repo / 'examples'}", "checks": []}
    errors = any("error" in check for check in checks)
    status: Status = "error" if errors else "passed" if all(c["as-expected"] for c in checks) else "failed"
    return {"status": status, "platform": target, "checks": checks}


# ---------------------------------------------------------------------------------------------------------------
# Determinism: the same training twice with envlock's settings, twice without, weights compared by sha256.

WeightsDiff = Callable[[Path, Path], dict[str, Any]]


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
) -> dict[str, Any]:
    """One training subprocess: exit code, seconds, the weights' sha256, or why there are none."""
    command = training.command(out, deterministic)
    run: dict[str, Any] = {"command": command}
    if timeout is None:
        return {**run, "error": "skipped: the check's time budget was spent"}
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
        run["error"] = f"timed out after {round(timeout, 1):g} s"
        run["output"] = _tail(exc.output)
        return run
    except OSError as exc:
        return {**run, "error": f"cannot start it: {exc}"}
    finally:
        run["seconds"] = round(time.monotonic() - started, 2)
    run |= {"exit-code": done.returncode, "output": _tail(done.stdout)}
    weights = out / training.weights
    if done.returncode != 0:
        run["error"] = f"exited {done.returncode}"
    elif not weights.is_file():
        run["error"] = f"wrote no {training.weights}"
    else:
        run["sha256"] = sha256_file(weights)
    return run


def compare_runs(runs: list[dict[str, Any]]) -> bool | None:
    """True when every run wrote weights with one sha256, False when they differ, None when a run gave none."""
    hashes = [run.get("sha256") for run in runs]
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
    weights_diff: WeightsDiff | None = None,
) -> dict[str, Any]:
    """Train twice with envlock's determinism settings and twice without; compare the weights' sha256 per pair."""
    section: dict[str, Any] = {"seed": seed}
    env_base = dict(os.environ if base_env is None else base_env)
    with tempfile.TemporaryDirectory(prefix="envlock-gpu-check-") as scratch:
        for name, deterministic in (("deterministic", True), ("nondeterministic", False)):
            env, settings = arm_environment(env_base, deterministic, seed, lock_hash)
            outs = [Path(scratch, f"{name}-{n}") for n in (1, 2)]
            runs = [train_once(training, out, deterministic, env, deadline.timeout(run_timeout)) for out in outs]
            identical = compare_runs(runs)
            arm: dict[str, Any] = {
                "sets": settings or "none of envlock's variables (nondeterministic kernels allowed)",
                "runs": runs,
                "identical": identical,
            }
            if identical is False and weights_diff is not None:
                arm["weights-diff"] = _diff_weights(
                    weights_diff, outs[0] / training.weights, outs[1] / training.weights
                )
            section[name] = arm
    with_settings, without = section["deterministic"]["identical"], section["nondeterministic"]["identical"]
    section["interpretation"] = _interpretation(with_settings, without)
    status: Status = "error" if None in (with_settings, without) else "passed" if with_settings else "failed"
    return {"status": status, **section}


def _diff_weights(weights_diff: WeightsDiff, first: Path, second: Path) -> dict[str, Any]:
    return _guarded(lambda: weights_diff(first, second))


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


def torch_weights_diff(python: str, deadline: Deadline, timeout: float = 60.0) -> WeightsDiff:
    """Compares two state dicts tensor by tensor: a differing hash then says whether, and how far, the weights moved."""

    def diff(first: Path, second: Path) -> dict[str, Any]:
        limit = deadline.timeout(timeout)
        if limit is None:
            return {"status": "skipped", "reason": "the check's time budget was spent"}
        done = subprocess.run(
            [python, "-c", _WEIGHTS_DIFF, str(first), str(second)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=limit,
            check=False,
        )
        if done.returncode != 0:
            return {"status": "error", "error": f"exited {done.returncode}", "output": _tail(done.stderr)}
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    return diff


# ---------------------------------------------------------------------------------------------------------------
# The whole check.


def gpu_check(
    nvml: Nvml | None,
    repo: Path,
    torch_info: Callable[[], dict[str, Any]],
    training: Training,
    deadline: Deadline,
    *,
    seed: int = 0,
    run_timeout: float = 90.0,
    environment: dict[str, Any] | None = None,
    weights_diff: WeightsDiff | None = None,
) -> dict[str, Any]:
    """Every part of the check as one JSON-able report; a part that cannot run says why, and nothing raises."""
    report: dict[str, Any] = {
        "report-version": REPORT_VERSION,
        "tool": "envlock gpu-check",
        "envlock-version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment or {},
    }
    report["host"] = _guarded(lambda: probe_section(nvml))
    # Read back as a run record would be: the report's host is exactly what `envlock run` records.
    host = _guarded_host(report["host"])
    report["torch"] = _guarded(torch_info)
    if host is None:
        report["preflight"] = {"status": "skipped", "reason": "the host probe failed (see host)"}
    else:
        report["preflight"] = _guarded(lambda: preflight_section(repo, host))
    if report["torch"].get("status") != "passed":
        reason = report["torch"].get("reason") or report["torch"].get("error") or "torch unusable"
        report["determinism"] = {"status": "skipped", "reason": reason}
    else:
        lock_hash = _example_lock_hash(report["preflight"])
        report["determinism"] = _guarded(
            lambda: determinism_section(
                training, deadline, seed=seed, lock_hash=lock_hash, run_timeout=run_timeout, weights_diff=weights_diff
            )
        )
    parts = ("host", "torch", "preflight", "determinism")
    report["ok"] = all(report[part].get("status") == "passed" for part in parts)
    report["seconds"] = round(deadline.clock() - deadline.start, 1)
    return report


def _guarded_host(section: dict[str, Any]) -> HostState | None:
    record = section.get("record")
    if not isinstance(record, dict):
        return None
    try:
        return HostState.from_dict(record)
    except ValueError as exc:
        section.update(status="error", error=f"the host record does not read back: {exc}")
        return None


def _example_lock_hash(preflight: dict[str, Any]) -> str:
    for check in preflight.get("checks", []):
        if check.get("lock", "").startswith(TORCH_EXAMPLE + "/") and "lock-hash" in check:
            return str(check["lock-hash"])
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Rendering and the entry point (scripts/gpu-check.sh).


def _host_line(section: dict[str, Any]) -> str:
    record = section.get("record")
    if section.get("status") == "error" or not isinstance(record, dict):
        return f"error: {section.get('error')}"
    if not record["gpus"]:
        return f"no GPU: {section.get('reason')}"
    gpus = "; ".join(
        f"GPU {g['index']} {g['name']} (sm_{g['compute-capability'].replace('.', '')}, {g['memory-mib']} MiB, "
        f"MIG {g['mig-mode']}, ECC {g['ecc-mode']})"
        for g in record["gpus"]
    )
    return f"driver {record['driver-version']} (CUDA {record['cuda-driver-version']}); {gpus}"


def _torch_line(section: dict[str, Any]) -> str:
    if section.get("status") == "passed":
        devices = ", ".join(d["name"] for d in section.get("devices", []))
        return f"torch {section['version']} (CUDA {section['cuda']}): {devices}"
    return str(section.get("reason") or section.get("error"))


def _preflight_lines(section: dict[str, Any]) -> list[str]:
    if "checks" not in section:
        return [str(section.get("reason") or section.get("error"))]
    checks = section["checks"]
    good = sum(1 for check in checks if check.get("as-expected"))
    lines = [f"{good}/{len(checks)} verdicts as expected"]
    for check in checks:
        what = check["lock"] + (f" [{check['variant']}]" if check.get("variant") else "")
        mark = "ok  " if check.get("as-expected") else "NOT "
        said = check.get("error") or (check["problems"][0] if check.get("problems") else "")
        said = said if len(said) <= _SAID else said[: _SAID - 1] + "…"
        lines.append(f"  {mark}{check.get('verdict', 'error'):8} {what}" + (f": {said}" if said else ""))
    return lines


def _determinism_lines(section: dict[str, Any]) -> list[str]:
    if "deterministic" not in section:
        return [str(section.get("reason") or section.get("error"))]
    lines = []
    for name, label in (("deterministic", "with envlock's settings"), ("nondeterministic", "without")):
        arm = section[name]
        runs = arm["runs"]
        seconds = " + ".join(f"{run['seconds']:.1f} s" for run in runs if "seconds" in run)
        hashes = sorted({run["sha256"][:12] for run in runs if "sha256" in run})
        verdict = {True: "identical", False: "DIFFERENT", None: "incomplete"}[arm["identical"]]
        lines.append(f"{label:24} {verdict} (sha256 {', '.join(hashes) or '-'}; {seconds or '-'})")
    lines.append(section["interpretation"])
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report in a few lines for a terminal."""
    lines = [f"envlock gpu-check ({report.get('seconds', '?')} s): {'all passed' if report.get('ok') else 'see below'}"]
    parts: list[tuple[str, list[str]]] = [
        ("host", [_host_line(report["host"])]),
        ("torch", [_torch_line(report["torch"])]),
        ("preflight", _preflight_lines(report["preflight"])),
        ("determinism", _determinism_lines(report["determinism"])),
    ]
    for name, body in parts:
        status = report[name].get("status", "?")
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
    try:
        report = gpu_check(
            PynvmlAdapter(),  # the one place the real adapter is made: tests call gpu_check with a fake
            repo,
            lambda: torch_section(args.python, deadline),
            example_training(repo, args.python, args.steps),
            deadline,
            seed=args.seed,
            run_timeout=args.run_timeout,
            environment=describe_environment(args.python),
            weights_diff=torch_weights_diff(args.python, deadline),
        )
    except Exception as exc:  # noqa: BLE001  (a bug in the check itself still ends in a report)
        report = {"report-version": REPORT_VERSION, "tool": "envlock gpu-check", "ok": False, **_failure(exc)}
    report["strict"] = args.strict
    out = args.out.absolute()
    try:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(json.dumps(report, indent=2))
        print(f"gpu-check: cannot write the report to {out}: {exc}", file=sys.stderr)
        return 2
    try:
        print("\n".join(summary_lines(report)))
    except (KeyError, TypeError, ValueError) as exc:  # a malformed section must not hide the written report
        print(f"gpu-check: no summary ({type(exc).__name__}: {exc}); see the report")
    print(f"report: {out}")
    return 1 if args.strict and not report.get("ok") else 0


if __name__ == "__main__":
    sys.exit(main())
