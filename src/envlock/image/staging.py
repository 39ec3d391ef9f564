"""Unpack locked wheels into the image's virtual environment layout, on the host, without running Python."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import parse_wheel_filename

from envlock.errors import NoWheelError
from envlock.lock.resolve import LockedFile, LockedPackage

VENV = "/opt/envlock/venv"


@dataclass(frozen=True)
class VenvLayout:
    """Paths of the image's venv, relative to the venv root, for one Python minor version."""

    python: str  # "3.11"
    home: str = "/usr/bin"  # where the base's own interpreter lives

    @property
    def site_packages(self) -> str:
        """`lib/python3.11/site-packages`."""
        return f"lib/python{self.python}/site-packages"

    def scheme(self, root: Path, distribution: str) -> dict[str, str]:
        """The install scheme for one distribution, rooted at a staging directory."""
        return {
            "purelib": str(root / self.site_packages),
            "platlib": str(root / self.site_packages),
            "scripts": str(root / "bin"),
            "headers": str(root / "include" / "site" / f"python{self.python}" / distribution),
            "data": str(root),
        }

    def skeleton(self, root: Path) -> None:
        """pyvenv.cfg and the interpreter links: a venv over the base's own Python."""
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / self.site_packages).mkdir(parents=True, exist_ok=True)
        (root / "pyvenv.cfg").write_text(
            f"home = {self.home}\ninclude-system-site-packages = false\nversion = {self.python}\n"
            f"executable = {self.home}/python{self.python}\ncommand = envlock\n",
            encoding="utf-8",
        )
        for name in ("python", "python3", f"python{self.python}"):
            link = root / "bin" / name
            if not link.is_symlink():
                link.symlink_to(f"{self.home}/python{self.python}")


def choose_wheel(package: LockedPackage, tags: list[Tag]) -> LockedFile:
    """The wheel an installer would pick on the target: the one whose best tag ranks highest."""
    rank = {tag: i for i, tag in enumerate(tags)}
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


def install_wheel(wheel: Path, filename: str, root: Path, layout: VenvLayout) -> None:
    """Unpack one wheel into root; scripts get the image venv's interpreter; no bytecode, no direct_url."""
    from installer import install  # noqa: PLC0415
    from installer.destinations import SchemeDictionaryDestination  # noqa: PLC0415
    from installer.sources import WheelFile  # noqa: PLC0415

    distribution = parse_wheel_filename(filename)[0]
    destination = SchemeDictionaryDestination(
        layout.scheme(root, distribution),
        interpreter=f"{VENV}/bin/python",
        script_kind="posix",
        bytecode_optimization_levels=(),
    )
    # WheelFile wants the real file name (it parses the distribution from it); the cache names files by hash.
    with tempfile.TemporaryDirectory(prefix="envlock-wheel-") as tmp:
        link = Path(tmp, filename)
        link.symlink_to(wheel)
        with WheelFile.open(link) as source:
            install(source, destination, additional_metadata={"INSTALLER": b"envlock\n"})
