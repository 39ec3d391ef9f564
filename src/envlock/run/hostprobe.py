"""What the host offers a run: NVIDIA driver, GPUs (through NVML, behind a small Protocol), CPU, kernel, Docker."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from envlock.codecs import Codec, Problems, field
from envlock.errors import HostProbeError, NvmlUnavailableError

UNKNOWN = "unknown"
NOT_APPLICABLE = "n/a"
_MIB = 1024 * 1024


class Gpu(Codec):
    """One GPU as NVML reports it (its JSON form in run records: kebab-case keys, every one required)."""

    index: int
    name: str
    uuid: str
    memory_mib: int
    compute_capability: str  # "8.6"
    mig_mode: str  # "enabled" / "disabled" / "n/a"
    ecc_mode: str  # "enabled" / "disabled" / "n/a"

    @property
    def arch(self) -> str:
        """The architecture name compilers and PyTorch use: `8.6` → `sm_86`."""
        return "sm_" + self.compute_capability.replace(".", "")


def gpu_summary(gpus: Iterable[Gpu]) -> str:
    """Recorded GPUs in one line: `NVIDIA A100-SXM4-80GB (sm_80), …`, or `none`."""
    return ", ".join(f"{gpu.name} ({gpu.arch})" for gpu in gpus) or "none"


class HostState(Codec):
    """The host a run meets; a host without an NVIDIA driver is a CPU host, which is not an error."""

    driver_version: str | None  # "550.54.15"; None on a CPU host
    cuda_driver_version: str | None  # newest CUDA the driver supports, "12.4"
    gpus: tuple[Gpu, ...] = field(absent=())
    cpu_model: str
    kernel: str
    docker_version: str | None
    nvml_error: str | None = None  # why NVML was unavailable, for the record

    @property
    def is_gpu_host(self) -> bool:
        """True when a driver answered and reported at least one GPU."""
        return self.driver_version is not None and bool(self.gpus)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostState:
        """Read `as_dict()` back; ValueError naming every problem when the record is malformed."""
        problems = Problems()
        host = cls.decode(data, problems)
        if problems:
            raise ValueError("host record: " + "; ".join(problems.items))
        return host


class Nvml(Protocol):
    """What the probe needs from NVML; GPUs are addressed by their NVML index."""

    def init(self) -> None:
        """Start NVML; NvmlUnavailableError when no usable driver is there."""
        ...

    def shutdown(self) -> None:
        """Release NVML."""
        ...

    def driver_version(self) -> str:
        """The kernel driver's version, `550.54.15`."""
        ...

    def cuda_driver_version(self) -> int:
        """The newest CUDA the driver supports, as NVML encodes it: 12040 for 12.4."""
        ...

    def device_count(self) -> int:
        """How many GPUs NVML sees."""
        ...

    def name(self, index: int) -> str:
        """Product name, `NVIDIA A100-SXM4-80GB`."""
        ...

    def uuid(self, index: int) -> str:
        """`GPU-…`, stable across reboots and index reordering."""
        ...

    def memory_total(self, index: int) -> int:
        """Total memory in bytes."""
        ...

    def compute_capability(self, index: int) -> tuple[int, int]:
        """(major, minor), (8, 6) for sm_86."""
        ...

    def mig_mode(self, index: int) -> bool | None:
        """Current MIG mode; None when the GPU does not support MIG."""
        ...

    def ecc_mode(self, index: int) -> bool | None:
        """Current ECC mode; None when the GPU does not support ECC."""
        ...


# Why NVML would not start, in the user's words; other codes keep NVML's own text.
_UNAVAILABLE_REASONS = {
    "LibraryNotFound": "NVML shared library not found (no NVIDIA driver installed)",
    "DriverNotLoaded": "NVIDIA kernel driver not loaded",
    "NoPermission": "no permission to access the NVIDIA driver",
    "LibRmVersionMismatch": "NVML library and NVIDIA kernel driver versions differ (reboot after a driver upgrade?)",
}


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__.removeprefix("NVMLError_")
    return _UNAVAILABLE_REASONS.get(name, f"NVML: {exc}")


# Any of these exists wherever NVML can work (the kernel driver's files, or WSL's bridged library).
DRIVER_TRACES = (
    Path("/proc/driver/nvidia/version"),
    Path("/dev/nvidiactl"),
    Path("/usr/lib/wsl/lib/libnvidia-ml.so.1"),
)


class PynvmlAdapter:
    """Nvml through pynvml (nvidia-ml-py), imported only when a probe runs."""

    def __init__(self, module: Any | None = None, driver_traces: tuple[Path, ...] = DRIVER_TRACES) -> None:
        self._module = module  # pynvml itself unless a test hands in a stand-in
        self._handles: dict[int, Any] = {}
        self._driver_traces = driver_traces

    def _pynvml(self) -> Any:
        if self._module is None:
            import pynvml  # noqa: PLC0415  (ctypes bindings; only commands that probe the host need them)

            self._module = pynvml
        return self._module

    def init(self) -> None:
        """nvmlInit; every failure here means there is no usable driver."""
        if self._module is None and not any(trace.exists() for trace in self._driver_traces):
            # No NVIDIA driver on this machine: say so without loading the bindings (start-up time).
            raise NvmlUnavailableError("no NVIDIA driver on this host (no /proc/driver/nvidia, /dev/nvidiactl)")
        try:
            pynvml = self._pynvml()
        except ImportError as exc:
            raise NvmlUnavailableError("pynvml (nvidia-ml-py) is not installed") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(_reason(exc)) from exc

    def shutdown(self) -> None:
        """nvmlShutdown; a failure to shut down changes nothing the probe reported."""
        pynvml = self._pynvml()
        self._handles.clear()
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            return

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        pynvml = self._pynvml()
        try:
            yield
        except pynvml.NVMLError as exc:
            raise HostProbeError(f"cannot read {what} from NVML: {exc}") from exc

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            with self._translated(f"GPU {index}"):
                self._handles[index] = self._pynvml().nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    @staticmethod
    def _text(value: str | bytes) -> str:
        # Older nvidia-ml-py releases return bytes for strings.
        return value.decode() if isinstance(value, bytes) else value

    def driver_version(self) -> str:
        """nvmlSystemGetDriverVersion."""
        with self._translated("the driver version"):
            return self._text(self._pynvml().nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> int:
        """nvmlSystemGetCudaDriverVersion_v2."""
        with self._translated("the driver's CUDA version"):
            return int(self._pynvml().nvmlSystemGetCudaDriverVersion_v2())

    def device_count(self) -> int:
        """nvmlDeviceGetCount."""
        with self._translated("the GPU count"):
            return int(self._pynvml().nvmlDeviceGetCount())

    def name(self, index: int) -> str:
        """nvmlDeviceGetName."""
        handle = self._handle(index)
        with self._translated(f"the name of GPU {index}"):
            return self._text(self._pynvml().nvmlDeviceGetName(handle))

    def uuid(self, index: int) -> str:
        """nvmlDeviceGetUUID."""
        handle = self._handle(index)
        with self._translated(f"the UUID of GPU {index}"):
            return self._text(self._pynvml().nvmlDeviceGetUUID(handle))

    def memory_total(self, index: int) -> int:
        """nvmlDeviceGetMemoryInfo().total."""
        handle = self._handle(index)
        with self._translated(f"the memory of GPU {index}"):
            return int(self._pynvml().nvmlDeviceGetMemoryInfo(handle).total)

    def compute_capability(self, index: int) -> tuple[int, int]:
        """nvmlDeviceGetCudaComputeCapability."""
        handle = self._handle(index)
        with self._translated(f"the compute capability of GPU {index}"):
            major, minor = self._pynvml().nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)

    def _optional_mode(self, index: int, what: str, getter: str, enabled: int) -> bool | None:
        pynvml = self._pynvml()
        handle = self._handle(index)
        with self._translated(f"the {what} mode of GPU {index}"):
            try:
                current, _pending = getattr(pynvml, getter)(handle)
            # Consumer GPUs have neither MIG nor ECC; drivers older than the call lack the function.
            except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
                return None
        return bool(current == enabled)

    def mig_mode(self, index: int) -> bool | None:
        """nvmlDeviceGetMigMode, current mode; None when not supported."""
        return self._optional_mode(index, "MIG", "nvmlDeviceGetMigMode", self._pynvml().NVML_DEVICE_MIG_ENABLE)

    def ecc_mode(self, index: int) -> bool | None:
        """nvmlDeviceGetEccMode, current mode; None when not supported."""
        return self._optional_mode(index, "ECC", "nvmlDeviceGetEccMode", self._pynvml().NVML_FEATURE_ENABLED)


def cuda_version_string(encoded: int) -> str:
    """NVML's integer CUDA version as `major.minor`: 12040 → `12.4`, 13000 → `13.0`."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def read_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first `model name` in /proc/cpuinfo; else what platform knows; else unknown."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    # arm64 kernels write no `model name`.
    return platform.processor() or UNKNOWN


def docker_server_version() -> str | None:
    """The Docker engine's version, or None when no engine answers."""
    import docker  # noqa: PLC0415  (slow to import)
    import docker.errors  # noqa: PLC0415
    import requests  # noqa: PLC0415

    try:
        client = docker.from_env(timeout=10)
        try:
            return str(client.version()["Version"])
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException, KeyError):
        return None


def _mode(value: bool | None) -> str:
    if value is None:
        return NOT_APPLICABLE
    return "enabled" if value else "disabled"


def _read_gpus(nvml: Nvml) -> tuple[Gpu, ...]:
    gpus = []
    for index in range(nvml.device_count()):
        major, minor = nvml.compute_capability(index)
        gpus.append(
            Gpu(
                index=index,
                name=nvml.name(index),
                uuid=nvml.uuid(index),
                memory_mib=nvml.memory_total(index) // _MIB,
                compute_capability=f"{major}.{minor}",
                mig_mode=_mode(nvml.mig_mode(index)),
                ecc_mode=_mode(nvml.ecc_mode(index)),
            )
        )
    return tuple(gpus)


def probe_host(
    nvml: Nvml | None,
    docker_version: Callable[[], str | None] = docker_server_version,
    cpu_model: Callable[[], str] = read_cpu_model,
) -> HostState:
    """Probe the host; without NVML (None) or a usable driver it is a CPU host and the reason is recorded."""
    driver: str | None = None
    cuda: str | None = None
    gpus: tuple[Gpu, ...] = ()
    nvml_error: str | None = None
    if nvml is None:
        nvml_error = "NVML not probed"
    else:
        try:
            nvml.init()
        except NvmlUnavailableError as exc:
            nvml_error = exc.message
        else:
            try:
                driver = nvml.driver_version()
                cuda = cuda_version_string(nvml.cuda_driver_version())
                gpus = _read_gpus(nvml)
            finally:
                nvml.shutdown()
    return HostState(
        driver_version=driver,
        cuda_driver_version=cuda,
        gpus=gpus,
        cpu_model=cpu_model(),
        kernel=platform.release(),
        docker_version=docker_version(),
        nvml_error=nvml_error,
    )
