"""Probing the host through a fake NVML: CPU hosts are not errors, GPUs are read in full, records round-trip."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pynvml
import pytest

from envlock.errors import HostProbeError
from envlock.run.hostprobe import Gpu, HostState, PynvmlAdapter, cuda_version_string, probe_host, read_cpu_model
from tests.fakes import A100, GIB, RTX_4090, FakeGpu, FakeNvml, FakePynvml, cpu_host, gpu_host

A100_RECORD = Gpu(0, "NVIDIA A100-SXM4-80GB", "GPU-a", 81920, "8.0", "disabled", "enabled").as_dict()


def test_a_host_without_driver_is_a_cpu_host_not_an_error() -> None:
    nvml = FakeNvml(unavailable="NVML shared library not found (no NVIDIA driver installed)")
    host = probe_host(nvml, lambda: None, lambda: "Intel(R) Xeon(R) Gold 6338")
    assert not host.is_gpu_host
    assert (host.driver_version, host.cuda_driver_version, host.gpus) == (None, None, ())
    assert host.nvml_error == "NVML shared library not found (no NVIDIA driver installed)"
    assert (host.cpu_model, host.kernel, host.docker_version) == (
        "Intel(R) Xeon(R) Gold 6338",
        platform.release(),
        None,
    )
    assert nvml.calls == ["init"]  # nothing to shut down after a failed init


def test_no_nvml_at_all_is_a_cpu_host() -> None:
    host = probe_host(None, lambda: "27.3.1", lambda: "AMD EPYC 7763")
    assert not host.is_gpu_host
    assert host.nvml_error == "NVML not probed"


def test_two_consumer_gpus_have_no_mig_or_ecc() -> None:
    nvml = FakeNvml(driver="550.54.15", cuda=12040, gpus=[RTX_4090, RTX_4090])
    host = probe_host(nvml, lambda: "27.3.1", lambda: "AMD Ryzen 9 7950X")
    assert host.is_gpu_host
    assert (host.driver_version, host.cuda_driver_version, host.nvml_error) == ("550.54.15", "12.4", None)
    assert host.gpus == (
        Gpu(0, "NVIDIA GeForce RTX 4090", "GPU-00000000-0000-0000-0000-000000000000", 24576, "8.9", "n/a", "n/a"),
        Gpu(1, "NVIDIA GeForce RTX 4090", "GPU-00000001-0000-0000-0000-000000000000", 24576, "8.9", "n/a", "n/a"),
    )
    assert host.gpus[0].arch == "sm_89"
    assert nvml.calls == ["init", "shutdown"]


def test_datacenter_gpu_modes() -> None:
    mig_on = FakeGpu("NVIDIA H100 80GB HBM3", (9, 0), memory_bytes=80 * GIB, mig=True, ecc=True)
    host = gpu_host("570.86.15", A100, mig_on, cuda=12080)
    assert [(g.mig_mode, g.ecc_mode, g.arch, g.memory_mib) for g in host.gpus] == [
        ("disabled", "enabled", "sm_80", 81920),
        ("enabled", "enabled", "sm_90", 81920),
    ]


def test_driver_without_gpus_is_not_a_gpu_host() -> None:
    host = gpu_host("550.54.15")
    assert host.driver_version == "550.54.15"
    assert not host.is_gpu_host


def test_shutdown_also_after_a_failure_mid_probe() -> None:
    nvml = FakeNvml(gpus=[A100, A100], broken_gpu=1)
    with pytest.raises(HostProbeError, match="GPU 1"):
        probe_host(nvml, lambda: None, lambda: "x")
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(("encoded", "version"), [(12040, "12.4"), (12080, "12.8"), (13000, "13.0"), (11080, "11.8")])
def test_cuda_driver_version(encoded: int, version: str) -> None:
    assert cuda_version_string(encoded) == version
    assert gpu_host("580.65.06", A100, cuda=encoded).cuda_driver_version == version


def test_sm_names_for_two_digit_majors() -> None:
    assert Gpu(0, "NVIDIA B200", "GPU-x", 183359, "10.0", "disabled", "enabled").arch == "sm_100"
    assert Gpu(0, "NVIDIA GeForce RTX 5090", "GPU-x", 32607, "12.0", "n/a", "n/a").arch == "sm_120"


@pytest.mark.parametrize("host", [gpu_host("550.54.15", A100, RTX_4090), cpu_host()], ids=["gpu", "cpu"])
def test_record_round_trip(host: HostState) -> None:
    data = json.loads(json.dumps(host.as_dict()))
    assert HostState.from_dict(data) == host


def test_record_keys_are_kebab_case() -> None:
    data = gpu_host("550.54.15", A100).as_dict()
    assert data["driver-version"] == "550.54.15"
    assert data["cuda-driver-version"] == "12.4"
    assert data["gpus"][0]["compute-capability"] == "8.0"
    assert data["gpus"][0]["memory-mib"] == 81920
    assert set(data) == {
        "driver-version",
        "cuda-driver-version",
        "gpus",
        "cpu-model",
        "kernel",
        "docker-version",
        "nvml-error",
    }


def test_record_missing_optional_fields_reads_as_null() -> None:
    host = HostState.from_dict({"cpu-model": "AMD EPYC 7763", "kernel": "6.8.0"})
    assert (host.driver_version, host.gpus, host.nvml_error) == (None, (), None)


@pytest.mark.parametrize(
    "data",
    [
        {"kernel": "6.8.0"},
        {"cpu-model": "x", "kernel": "6.8.0", "driver-version": 550},
        {"cpu-model": "x", "kernel": "6.8.0", "gpus": "none"},
        {"cpu-model": "x", "kernel": "6.8.0", "gpus": [{**A100_RECORD, "memory-mib": "80 GiB"}]},
        {"cpu-model": "x", "kernel": "6.8.0", "gpus": [{**A100_RECORD, "index": True}]},
    ],
)
def test_malformed_record_is_a_value_error(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="host record"):
        HostState.from_dict(data)


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    )
    assert read_cpu_model(cpuinfo) == "AMD EPYC 7763 64-Core Processor"


def test_cpu_model_without_model_name(tmp_path: Path) -> None:
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    expected = platform.processor() or "unknown"
    assert read_cpu_model(arm) == expected
    assert read_cpu_model(tmp_path / "absent") == expected


def test_adapter_reads_a_consumer_gpu() -> None:
    module = FakePynvml(mig_error=pynvml.NVML_ERROR_NOT_SUPPORTED)
    host = probe_host(PynvmlAdapter(module), lambda: None, lambda: "x")
    assert (host.driver_version, host.cuda_driver_version) == ("535.104.05", "12.2")
    assert host.gpus == (Gpu(0, "NVIDIA GeForce RTX 3090", "GPU-3090", 24576, "8.6", "n/a", "n/a"),)
    assert module.shut_down


def test_adapter_reads_no_mig_from_a_driver_without_the_call() -> None:
    module = FakePynvml(mig_error=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    host = probe_host(PynvmlAdapter(module), lambda: None, lambda: "x")
    assert (host.gpus[0].mig_mode, host.gpus[0].ecc_mode) == ("n/a", "n/a")


def test_adapter_reads_mig_disabled() -> None:
    host = probe_host(PynvmlAdapter(FakePynvml()), lambda: None, lambda: "x")
    assert host.gpus[0].mig_mode == "disabled"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML shared library not found (no NVIDIA driver installed)"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA kernel driver not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission to access the NVIDIA driver"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "NVML library and NVIDIA kernel driver versions differ"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML: Unknown Error"),
    ],
)
def test_adapter_init_failure_is_a_cpu_host(code: int, reason: str) -> None:
    module = FakePynvml(init_error=code)
    host = probe_host(PynvmlAdapter(module), lambda: None, lambda: "x")
    assert not host.is_gpu_host
    assert host.nvml_error is not None
    assert host.nvml_error.startswith(reason)
    assert not module.shut_down


def test_adapter_translates_other_failures() -> None:
    module = FakePynvml(mig_error=pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(HostProbeError, match="MIG mode of GPU 0") as caught:
        probe_host(PynvmlAdapter(module), lambda: None, lambda: "x")
    assert isinstance(caught.value.__cause__, pynvml.NVMLError)
    assert module.shut_down


def test_the_real_adapter_never_raises_for_a_missing_driver() -> None:
    # Whatever this machine has: without a driver it is a CPU host with the reason recorded.
    host = probe_host(PynvmlAdapter(), lambda: None)
    assert host.is_gpu_host or host.nvml_error
    assert host.cpu_model


def test_no_driver_traces_means_a_cpu_host_without_loading_nvml(tmp_path: Path) -> None:
    host = probe_host(PynvmlAdapter(driver_traces=(tmp_path / "proc-driver-nvidia",)), lambda: None, lambda: "cpu")
    assert not host.is_gpu_host and host.nvml_error is not None and "no NVIDIA driver" in host.nvml_error
