"""The CUDA stack a resolution carries: runtime, cuDNN, NCCL, cuBLAS, driver floor and GPU architectures."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from envlock.errors import CudaMismatchError
from envlock.lock.resolve import LockedPackage
from envlock.paths import data_file

UNKNOWN = "unknown"
Source = Literal["wheels", "base", "none"]

_LIBRARIES = {
    "runtime": re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$"),
    "cudnn": re.compile(r"^nvidia-cudnn(-cu\d+)?$"),
    "nccl": re.compile(r"^nvidia-nccl(-cu\d+)?$"),
    "cublas": re.compile(r"^nvidia-cublas(-cu\d+)?$"),
}
# Any of these in a resolution means the image carries CUDA user-space libraries.
_ANY_CUDA = re.compile(
    r"^nvidia-(cuda-[a-z]+|cudnn|cublas|cufft|curand|cusolver|cusparse|cusparselt|nccl|nvjitlink|nvtx|cufile)"
    r"(-cu\d+)?$"
)
# ENV names in NVIDIA's CUDA base images (nvidia/cuda:*).
_BASE_ENV = {
    "runtime": "CUDA_VERSION",
    "cudnn": "NV_CUDNN_VERSION",
    "nccl": "NCCL_VERSION",
    "cublas": "NV_LIBCUBLAS_VERSION",
}


@dataclass(frozen=True)
class CudaStack:
    """What a target needs from the host's GPU driver, and what it was built for."""

    kind: Literal["cuda", "cpu"]
    source: Source
    runtime: str = UNKNOWN
    cudnn: str = UNKNOWN
    nccl: str = UNKNOWN
    cublas: str = UNKNOWN
    driver_min: str = UNKNOWN
    driver_min_compat: str = UNKNOWN
    archs: tuple[str, ...] = ()  # empty: unknown (or cpu)
    archs_source: str = ""

    @property
    def version(self) -> str:
        """The toolkit minor version, e.g. `12.4`, or unknown."""
        return minor_version(self.runtime) if self.runtime != UNKNOWN else UNKNOWN

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping for the lock file and JSON output."""
        if self.kind == "cpu":
            return {"kind": "cpu", "source": self.source}
        return {
            "kind": self.kind,
            "source": self.source,
            "version": self.version,
            "runtime": self.runtime,
            "cudnn": self.cudnn,
            "nccl": self.nccl,
            "cublas": self.cublas,
            "driver-min": self.driver_min,
            "driver-min-compat": self.driver_min_compat,
            "archs": list(self.archs) or UNKNOWN,
        }


CPU = CudaStack(kind="cpu", source="none")


def minor_version(version: str) -> str:
    """`12.4.127` → `12.4`."""
    return ".".join(version.split(".")[:2])


@cache
def _table() -> dict[str, Any]:
    return tomllib.loads(data_file("cuda.toml").read_text(encoding="utf-8"))


def driver_floor(cuda_version: str) -> tuple[str, str]:
    """(full, minor-version-compatible) minimum driver for a CUDA minor version; unknown when not tabled."""
    table = _table()["driver"]
    full = table["full"].get(cuda_version, UNKNOWN)
    compat = table["minor-compat"].get(cuda_version.split(".", maxsplit=1)[0], UNKNOWN)
    return str(full), str(compat)


def torch_archs(torch_version: str, cuda_version: str) -> tuple[tuple[str, ...], str]:
    """GPU architectures of PyPI's torch build for that CUDA, with the source; empty when not known."""
    torch_minor = minor_version(torch_version.split("+", maxsplit=1)[0])
    for row in _table()["torch-archs"]:
        if torch_minor in row["torch"] and cuda_version in row["cuda"]:
            return tuple(row["archs"]), str(row["source"])
    return (), ""


def derive_cuda(packages: Iterable[LockedPackage], base_env: Mapping[str, str] | None = None) -> CudaStack:
    """The stack from the resolved wheels; from the base image's own metadata when no wheel carries CUDA."""
    by_name = {p.name: p.version for p in packages}
    found: dict[str, str] = {}
    for role, pattern in _LIBRARIES.items():
        for name, version in by_name.items():
            if pattern.match(name):
                found[role] = version
    if any(_ANY_CUDA.match(name) for name in by_name):
        source: Source = "wheels"
    elif base_env and "CUDA_VERSION" in base_env:
        source = "base"
        for role, variable in _BASE_ENV.items():
            if base_env.get(variable):
                # nvidia/cuda writes Debian revisions into some of these (`12.4.5.8-1`).
                found[role] = base_env[variable].split("-")[0]
    else:
        return CPU
    runtime = found.get("runtime", UNKNOWN)
    full, compat = driver_floor(minor_version(runtime)) if runtime != UNKNOWN else (UNKNOWN, UNKNOWN)
    archs: tuple[str, ...] = ()
    archs_source = ""
    if "torch" in by_name and runtime != UNKNOWN and source == "wheels":
        archs, archs_source = torch_archs(by_name["torch"], minor_version(runtime))
    return CudaStack(
        kind="cuda",
        source=source,
        runtime=runtime,
        cudnn=found.get("cudnn", UNKNOWN),
        nccl=found.get("nccl", UNKNOWN),
        cublas=found.get("cublas", UNKNOWN),
        driver_min=full,
        driver_min_compat=compat,
        archs=archs,
        archs_source=archs_source,
    )


def check_wish(stack: CudaStack, wish: str, platform: str) -> None:
    """Refuse a resolution that contradicts `[tool.envlock] cuda` (auto accepts anything)."""
    if wish == "auto":
        return
    if wish == "cpu" and stack.kind == "cuda":
        raise CudaMismatchError(
            f'cuda = "cpu" but the resolution for {platform} pulls CUDA libraries (runtime {stack.runtime})',
            hint='lock from a CPU-only index (e.g. index-url = "https://download.pytorch.org/whl/cpu") '
            'or set cuda = "auto"',
        )
    if wish not in ("auto", "cpu") and stack.version != wish:
        found = "no CUDA libraries" if stack.kind == "cpu" else f"CUDA {stack.version} (runtime {stack.runtime})"
        raise CudaMismatchError(
            f'cuda = "{wish}" but the resolution for {platform} has {found}',
            hint=f'pin your framework to a build for CUDA {wish}, or set cuda = "auto"',
        )
