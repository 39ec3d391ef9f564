"""Target platforms: what `linux/amd64` means to uv, to wheel tags and to environment markers."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from envlock.errors import NoWheelError

if TYPE_CHECKING:  # resolve imports this module
    from envlock.lock.resolve import LockedFile, LockedPackage

Platform = Literal["linux/amd64", "linux/arm64"]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)

# manylinux glibc floor assumed when the base's own glibc is unknown (an upstream image base).
DEFAULT_GLIBC = (2, 28)
# manylinux_2_17 is the oldest tag uv accepts for --python-platform.
_UV_MIN_GLIBC = (2, 17)


_MACHINES: dict[str, str] = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
# The OCI / Docker `architecture` of each platform.
ARCHITECTURES: dict[str, str] = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
_HOST_PLATFORMS = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}


def host_platform() -> str:
    """The platform this machine runs (and builds bases for) without emulation."""
    machine = platform.machine()
    return _HOST_PLATFORMS.get(machine, f"{sys.platform}/{machine}")


def emulated(platform: str, binfmt: Path = Path("/proc/sys/fs/binfmt_misc")) -> bool:
    """Whether this machine runs `platform`'s programs, natively or through an enabled qemu binfmt handler
    (Debian: qemu-user-static and binfmt-support, binfmt_misc mounted)."""
    if platform == host_platform():
        return True
    machine = _MACHINES.get(platform)
    handler = binfmt / f"qemu-{machine}"
    try:
        return machine is not None and handler.read_text(encoding="utf-8").startswith("enabled")
    except OSError:
        return False


def environment_marker(platform: str, python: str) -> str:
    """A PEP 508 marker that is true exactly on this platform with this Python minor version."""
    return f"sys_platform == 'linux' and platform_machine == '{_MACHINES[platform]}' and python_version == '{python}'"


@dataclass(frozen=True)
class Target:
    """One platform of the lock, with the Python and glibc of the image it will run in."""

    platform: Platform
    python: str  # "3.11"
    glibc: tuple[int, int]

    @property
    def machine(self) -> str:
        """The machine name in wheel tags and in `platform.machine()`."""
        return _MACHINES[self.platform]

    @property
    def uv_python_platform(self) -> str:
        """The `--python-platform` value for uv, e.g. `x86_64-manylinux_2_36`."""
        major, minor = max(self.glibc, _UV_MIN_GLIBC)
        return f"{self.machine}-manylinux_{major}_{minor}"

    @property
    def python_tuple(self) -> tuple[int, int]:
        """The target Python as a (major, minor) tuple."""
        major, minor = self.python.split(".")
        return int(major), int(minor)

    @property
    def marker(self) -> str:
        """A PEP 508 marker that is true exactly on this target."""
        return environment_marker(self.platform, self.python)

    def wheel_tags(self) -> list[Tag]:
        """Wheel tags a CPython of the target's version accepts on the target, best first (as installers rank)."""
        version = self.python_tuple
        interpreter = f"cp{version[0]}{version[1]}"
        platforms = self.platform_tags()
        ranked = [*cpython_tags(version, abis=[interpreter], platforms=platforms)]
        ranked += compatible_tags(version, interpreter, platforms)
        return list(dict.fromkeys(ranked))

    def platform_tags(self) -> list[str]:
        """manylinux platform tags the target accepts, most specific first."""
        arch = self.machine
        glibc_major, glibc_minor = self.glibc
        tags = [f"manylinux_{glibc_major}_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)]
        legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
        for (major, minor), alias in legacy.items():
            if (major, minor) <= self.glibc and (arch == "x86_64" or alias == "manylinux2014"):
                tags.append(f"{alias}_{arch}")
        return tags


def tag_rank(tags: Sequence[Tag]) -> dict[Tag, int]:
    """Each of a target's tags with its rank (0: the most specific), made once for choosing many wheels."""
    return {tag: i for i, tag in enumerate(tags)}


def choose_wheel(package: LockedPackage, tags: Sequence[Tag] | Mapping[Tag, int]) -> LockedFile:
    """The wheel an installer would pick on the target: the one whose best tag ranks highest (`tags`: in order, or
    their `tag_rank`; a target has ~1,000 tags, ranked once per plan rather than per package)."""
    rank = tags if isinstance(tags, Mapping) else tag_rank(tags)
    best: tuple[int, LockedFile] | None = None
    for wheel in package.wheels:
        scores = [rank[t] for t in parse_wheel_filename(wheel.name)[3] if t in rank]
        if scores and (best is None or min(scores) < best[0]):
            best = (min(scores), wheel)
    if best is None:
        raise NoWheelError(
            f"{package.name} {package.version} has no wheel for this target (only an sdist)",
            hint="pin a version that publishes a wheel for the platform; envlock images install wheels only",
        )
    return best[1]
