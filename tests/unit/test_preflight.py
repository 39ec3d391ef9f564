"""Preflight: the lock's driver floor and GPU architectures against the probed host, refusals with numbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from envlock.errors import PreflightError
from envlock.lock.cuda import CPU, derive_cuda
from envlock.run.preflight import Preflight, Verdict, check_host, enforce
from tests.fakes import A100, RTX_4090, TORCH_251_AMD64, FakeGpu, cpu_host, gpu_host, package

CU124 = derive_cuda(TORCH_251_AMD64)  # torch 2.5.1: driver >= 550.54.14 (compat 525.60.13), sm_50 … sm_90
CU128 = derive_cuda([package("torch", "2.8.0"), package("nvidia-cuda-runtime-cu12", "12.8.93")])
CU124_ARCHS = "sm_50, sm_60, sm_70, sm_75, sm_80, sm_86, sm_90"

RTX_5090 = FakeGpu("NVIDIA GeForce RTX 5090", (12, 0))
TESLA_K80 = FakeGpu("Tesla K80", (3, 7), ecc=True)


def test_the_stacks_under_test() -> None:
    assert (CU124.version, CU124.driver_min, CU124.driver_min_compat) == ("12.4", "550.54.14", "525.60.13")
    assert (CU128.version, CU128.driver_min, CU128.archs[-1]) == ("12.8", "570.26", "sm_120")


def test_driver_new_enough() -> None:
    assert check_host(CU124, gpu_host("550.54.15", A100)) == Verdict(ok=True)
    assert check_host(CU124, gpu_host("550.54.14", A100)) == Verdict(ok=True)


def test_driver_versions_compare_as_numbers() -> None:
    cu122 = replace(CU124, runtime="12.2.140", driver_min="535.54.03")
    # As strings "535.104.05" < "535.54.03"; as numbers it is newer.
    assert check_host(cu122, gpu_host("535.104.05", A100)).ok
    assert not check_host(CU124, gpu_host("99.1", A100)).ok


def test_minor_version_compatibility_is_a_warning() -> None:
    verdict = check_host(CU124, gpu_host("535.104.05", A100, cuda=12020))
    assert verdict.ok
    assert verdict.problems == ()
    assert verdict.warnings == (
        "host driver 535.104.05 is older than 550.54.14, the minimum for CUDA 12.4 (full compatibility); "
        "it is >= 525.60.13, so it runs under minor-version compatibility only: "
        "PTX newer than the driver will not JIT and some APIs need the full driver",
    )


def test_driver_too_old_is_refused_with_the_numbers() -> None:
    verdict = check_host(CU124, gpu_host("470.57.02", A100, cuda=11040))
    assert not verdict.ok
    assert verdict.problems == (
        "host driver 470.57.02 is older than 550.54.14, the minimum for CUDA 12.4 (full compatibility), "
        "and older than 525.60.13, the minimum for any CUDA 12.x (minor-version compatibility) "
        "(the driver supports CUDA up to 11.4)",
    )


def test_cpu_lock_runs_anywhere() -> None:
    assert check_host(CPU, gpu_host("470.57.02", RTX_5090, TESLA_K80)) == Verdict(ok=True)
    assert check_host(CPU, cpu_host()) == Verdict(ok=True)


def test_cuda_lock_on_a_cpu_host_is_refused() -> None:
    verdict = check_host(CU124, cpu_host())
    assert not verdict.ok
    assert verdict.problems == (
        "this host has no NVIDIA driver/GPU, but the lock's stack is CUDA 12.4 (needs driver >= 550.54.14); "
        "NVML shared library not found (no NVIDIA driver installed)",
    )
    with pytest.raises(PreflightError) as raised:
        enforce(verdict, force=False)
    assert raised.value.hint.startswith("run it on the CPU with --no-gpus"), "--no-gpus first, not --force"
    assert raised.value.hint.endswith("--force runs it anyway and marks the record forced")


def test_cuda_lock_on_a_driver_without_gpus_is_refused() -> None:
    verdict = check_host(CU124, gpu_host("550.54.15"))
    assert verdict.problems == (
        "this host has no NVIDIA driver/GPU, but the lock's stack is CUDA 12.4 (needs driver >= 550.54.14); "
        "driver 550.54.15 reports no GPU",
    )


def test_gpu_newer_than_every_built_architecture_is_refused() -> None:
    verdict = check_host(CU124, gpu_host("570.86.15", A100, RTX_5090))
    assert not verdict.ok
    assert verdict.problems == (
        f"GPU 1 (NVIDIA GeForce RTX 5090, sm_120) is not among the lock's architectures {CU124_ARCHS}: "
        "newer than every architecture the lock was built for",
    )
    assert check_host(CU128, gpu_host("570.86.15", A100, RTX_5090)) == Verdict(ok=True)


def test_gpu_older_than_every_built_architecture_is_refused() -> None:
    verdict = check_host(CU124, gpu_host("550.54.15", TESLA_K80))
    assert verdict.problems == (
        f"GPU 0 (Tesla K80, sm_37) is not among the lock's architectures {CU124_ARCHS}: no code in the lock runs on it",
    )


def test_same_major_lower_minor_than_every_built_one_is_refused() -> None:
    ampere_86_only = replace(CU124, archs=("sm_86", "sm_90"))
    verdict = check_host(ampere_86_only, gpu_host("550.54.15", A100))
    assert verdict.problems == (
        "GPU 0 (NVIDIA A100-SXM4-80GB, sm_80) is not among the lock's architectures sm_86, sm_90: "
        "no code in the lock runs on it",
    )


def test_same_major_newer_minor_runs_the_older_code_with_a_warning() -> None:
    verdict = check_host(CU124, gpu_host("550.54.15", RTX_4090))
    assert verdict.ok
    assert verdict.warnings == (
        f"GPU 0 (NVIDIA GeForce RTX 4090, sm_89) is not among the lock's architectures {CU124_ARCHS}; "
        "it runs the sm_86 code (same major architecture, binary compatible)",
    )


def test_every_problem_at_once() -> None:
    verdict = check_host(CU124, gpu_host("470.57.02", RTX_5090, RTX_4090, TESLA_K80))
    assert not verdict.ok
    assert [p.split(" ", 2)[:2] for p in verdict.problems] == [["host", "driver"], ["GPU", "0"], ["GPU", "2"]]
    assert len(verdict.warnings) == 1
    assert verdict.warnings[0].startswith("GPU 1 (NVIDIA GeForce RTX 4090, sm_89)")
    assert all("\n" not in line for line in verdict.problems + verdict.warnings)


def test_unknown_full_floor_warns() -> None:
    cu127 = replace(CU124, runtime="12.7.1", driver_min="unknown")
    verdict = check_host(cu127, gpu_host("560.35.03", A100, cuda=12060))
    assert verdict.ok
    assert verdict.warnings == (
        "the minimum driver for CUDA 12.7 (full compatibility) is unknown; host driver 560.35.03 is >= 525.60.13, "
        "so it runs at least under minor-version compatibility (PTX newer than the driver will not JIT and some "
        "APIs need the full driver) (the driver supports CUDA up to 12.6)",
    )
    # Below the major's own floor nothing of CUDA 12 runs, whatever the minor's floor is.
    assert not check_host(cu127, gpu_host("470.57.02", A100)).ok


def test_unknown_compat_floor_warns() -> None:
    no_compat = replace(CU124, driver_min_compat="unknown")
    verdict = check_host(no_compat, gpu_host("535.104.05", A100, cuda=12020))
    assert verdict.ok
    assert verdict.warnings == (
        "host driver 535.104.05 is older than 550.54.14, the minimum for CUDA 12.4 (full compatibility), and the "
        "minor-version compatibility floor for CUDA 12.x is unknown: it may not run "
        "(the driver supports CUDA up to 12.2)",
    )
    assert check_host(no_compat, gpu_host("550.54.15", A100)) == Verdict(ok=True)


def test_unknown_floors_and_archs_warn() -> None:
    cu14 = replace(CU124, runtime="14.0.10", driver_min="unknown", driver_min_compat="unknown", archs=())
    verdict = check_host(cu14, gpu_host("600.10", A100, RTX_4090, cuda=14000))
    assert verdict.ok
    assert verdict.warnings == (
        "the minimum driver for CUDA 14.0 is unknown; host driver 600.10 was not checked "
        "(the driver supports CUDA up to 14.0)",
        "the lock's GPU architectures are unknown; GPU 0 sm_80, GPU 1 sm_89 not checked",
    )


def test_cuda_lock_with_unknown_floor_on_a_cpu_host() -> None:
    unknown = replace(CU124, driver_min="unknown")
    assert (
        check_host(unknown, cpu_host())
        .problems[0]
        .startswith(
            "this host has no NVIDIA driver/GPU, but the lock's stack is CUDA 12.4 (its driver floor is unknown)"
        )
    )


def test_enforce_passes_warnings_through() -> None:
    verdict = check_host(CU124, gpu_host("535.104.05", RTX_4090))
    assert enforce(verdict, force=False) == Preflight(verdict.warnings, forced=False)
    assert enforce(verdict, force=True) == Preflight(verdict.warnings, forced=False), "nothing was overridden"
    assert enforce(Verdict(ok=True), force=False) == Preflight((), forced=False)


def test_enforce_refuses_with_every_problem() -> None:
    verdict = check_host(CU124, gpu_host("470.57.02", RTX_5090))
    with pytest.raises(PreflightError) as caught:
        enforce(verdict, force=False)
    error = caught.value
    assert error.exit_code == 12
    assert error.message == verdict.problems[0]
    assert (error.message, *error.details) == verdict.problems
    assert "--force" in error.hint


def test_enforce_with_force_records_the_overridden_problems() -> None:
    verdict = check_host(CU124, gpu_host("535.104.05", RTX_4090, RTX_5090))
    outcome = enforce(verdict, force=True)
    assert outcome.forced, "forced is data, not read back from the notes' wording"
    assert outcome.notes == (
        *verdict.warnings,
        f"forced: GPU 1 (NVIDIA GeForce RTX 5090, sm_120) is not among the lock's architectures {CU124_ARCHS}: "
        "newer than every architecture the lock was built for",
    )
    assert len(verdict.warnings) == 2  # minor-version compatibility, and the 4090 running sm_86 code
