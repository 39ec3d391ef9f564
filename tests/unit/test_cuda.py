"""The CUDA stack from resolved wheels, from a CUDA base image, or cpu; the driver table says unknown."""

from __future__ import annotations

import pytest

from envlock.errors import CudaMismatchError
from envlock.lock.cuda import CPU, check_wish, derive_cuda, driver_floor
from tests.fakes import TORCH_251_AMD64, package


def test_torch_251_stack_from_wheels() -> None:
    stack = derive_cuda(TORCH_251_AMD64)
    assert stack.kind == "cuda"
    assert stack.source == "wheels"
    assert (stack.runtime, stack.version) == ("12.4.127", "12.4")
    assert (stack.cudnn, stack.nccl, stack.cublas) == ("9.1.0.70", "2.21.5", "12.4.5.8")
    assert (stack.driver_min, stack.driver_min_compat) == ("550.54.14", "525.60.13")
    assert stack.archs == ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
    assert "pytorch" in stack.archs_source


def test_unsuffixed_cuda13_names() -> None:
    stack = derive_cuda(
        [
            package("torch", "2.15.0"),
            package("nvidia-cuda-runtime", "13.2.86"),
            package("nvidia-cudnn-cu13", "9.26.0.51"),
            package("nvidia-nccl-cu13", "2.30.7"),
        ]
    )
    assert (stack.runtime, stack.version, stack.cudnn, stack.nccl) == ("13.2.86", "13.2", "9.26.0.51", "2.30.7")
    assert (stack.driver_min, stack.driver_min_compat) == ("595.45.04", "580.65.06")
    assert stack.archs == ()  # torch 2.15's arch list is not in the table: unknown, not guessed
    assert stack.as_dict()["archs"] == "unknown"


def test_untabled_cuda_version_says_unknown() -> None:
    assert driver_floor("12.7") == ("unknown", "525.60.13")
    assert driver_floor("14.0") == ("unknown", "unknown")


def test_no_cuda_libraries_is_cpu() -> None:
    assert derive_cuda([package("numpy", "2.1.0"), package("nvidia-ml-py", "12.560.30")]) == CPU


def test_cuda_base_image_is_read_from_its_own_metadata() -> None:
    env = {"CUDA_VERSION": "12.4.1", "NV_CUDNN_VERSION": "9.1.0.70-1", "NCCL_VERSION": "2.21.5-1"}
    stack = derive_cuda([package("numpy", "2.1.0")], env)
    assert stack.source == "base"
    assert (stack.runtime, stack.cudnn, stack.nccl, stack.cublas) == ("12.4.1", "9.1.0.70", "2.21.5", "unknown")
    assert stack.driver_min == "550.54.14"


def test_wish_cpu_refuses_cuda_wheels() -> None:
    with pytest.raises(CudaMismatchError, match=r'cuda = "cpu" but .* \(runtime 12\.4\.127\)'):
        check_wish(derive_cuda(TORCH_251_AMD64), "cpu", "linux/amd64")


def test_wish_version_must_match() -> None:
    check_wish(derive_cuda(TORCH_251_AMD64), "12.4", "linux/amd64")
    with pytest.raises(CudaMismatchError, match=r'cuda = "12.8" but .* CUDA 12.4'):
        check_wish(derive_cuda(TORCH_251_AMD64), "12.8", "linux/amd64")
    with pytest.raises(CudaMismatchError, match="no CUDA libraries"):
        check_wish(CPU, "12.4", "linux/arm64")
