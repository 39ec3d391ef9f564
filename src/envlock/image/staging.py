"""Unpack locked wheels into the image's virtual environment layout, on the host, without running Python."""

from __future__ import annotations

import json
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from packaging.utils import parse_wheel_filename
from packaging.version import InvalidVersion, Version

from envlock.engine.launch import WORKDIR
from envlock.errors import BuildError
from envlock.lock.localpackages import LocalPackage

VENV = "/opt/envlock/venv"
# Where a run mounts (read-only) the dist-info of its own packages whose version comes from VCS: on sys.path through
# their `.pth`, so importlib.metadata finds the version of the commit that runs.
LOCAL_METADATA = f"{VENV}/envlock-local-metadata"


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
        # Wheels that ship the same files (mlflow, mlflow-skinny, mlflow-tracing): the later one wins, as with
        # pip; find_overlaps() has already named them and refused the conflicts that cannot be installed.
        overwrite_existing=True,
    )
    # WheelFile wants the real file name (it parses the distribution from it); the cache names files by hash.
    with tempfile.TemporaryDirectory(prefix="envlock-wheel-") as tmp:
        link = Path(tmp, filename)
        link.symlink_to(wheel)
        with WheelFile.open(link) as source, warnings.catch_warnings():
            # Bytecode a wheel ships in __pycache__ (numpy 1.26's does) is skipped, as pip skips it; installer says
            # so with a RuntimeWarning that would reach the user as a raw Python warning naming this file.
            warnings.filterwarnings("ignore", r"Skip installing .*__pycache__", RuntimeWarning)
            install(source, destination, additional_metadata={"INSTALLER": b"envlock\n"})


@dataclass(frozen=True)
class Overlap:
    """Files two wheels both install: the later wheel's copies are the ones the image keeps."""

    earlier: str  # distribution names
    later: str
    paths: tuple[str, ...]  # relative to the venv
    differing: tuple[str, ...]  # the subset whose bytes differ (by the zip's CRC-32)


def installed_files(wheel: Path, layout: VenvLayout) -> dict[str, int]:
    """Where each file of a wheel lands in the venv (dist-info and RECORD included), with its CRC-32."""
    out: dict[str, int] = {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.is_dir() and (where := _landing(info.filename, layout)) is not None:
                out[where] = info.CRC
    return out


def _landing(name: str, layout: VenvLayout) -> str | None:
    """Where a wheel's member lands, relative to the venv (None: a `.data` scheme installed nowhere)."""
    # The usual name is split as a string: a torch stack has 20,000 of them, and path objects cost 0.2 s a build.
    # An unusual one (`./a`, `a//b`, `/a`) is read as PurePosixPath reads it.
    usual = not (name.startswith(("/", ".")) or "//" in name or "/." in name)
    parts = tuple(name.split("/")) if usual else PurePosixPath(name).parts
    place: tuple[str, ...] = (layout.site_packages,)
    if parts[0].endswith(".data") and len(parts) > 2:
        schemes = {"purelib": place, "platlib": place, "scripts": ("bin",), "data": ()}
        if parts[1] not in schemes:
            return None
        place, parts = schemes[parts[1]], parts[2:]
    return "/".join((*place, *parts)) if usual else str(PurePosixPath(*place, *parts))


def find_overlaps(wheels: Sequence[tuple[str, Path]], layout: VenvLayout) -> list[Overlap]:
    """Files installed by more than one of `wheels` (file name, path; in install order): later wins.

    A path that is a file for one wheel and a directory for another cannot be installed at all: BuildError.
    """
    return overlaps_of([(filename, installed_files(path, layout)) for filename, path in wheels])


def overlaps_of(listed: Sequence[tuple[str, Mapping[str, int]]]) -> list[Overlap]:
    """`find_overlaps` over wheels already listed (file name, `installed_files`; in install order)."""
    # Plain strings, not PurePosixPath: a torch stack installs ~20,000 files, and every build that makes a layer
    # checks them all (path objects made this 0.5 s of a one-package rebuild).
    owner: dict[str, tuple[str, int]] = {}
    directories: dict[str, str] = {}
    found: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for filename, paths in listed:
        name = str(parse_wheel_filename(filename)[0])
        for installed, crc in sorted(paths.items()):
            parents = _parents(installed)
            clashes = [(installed, directories[installed])] if installed in directories else []
            clashes += [(p, owner[p][0]) for p in parents if p in owner]
            for where, other in clashes:
                if other == name:
                    continue
                raise BuildError(
                    f"{other} and {name} cannot both be installed: {where} is a file in one and a directory "
                    "in the other",
                    hint="pin versions of the two that agree, or drop one of them from the requirements",
                )
            if installed in owner and owner[installed][0] != name:
                earlier, earlier_crc = owner[installed]
                paths_of, differing = found.setdefault((earlier, name), ([], []))
                paths_of.append(installed)
                if earlier_crc != crc:
                    differing.append(installed)
            owner[installed] = (name, crc)
            for parent in parents:
                directories.setdefault(parent, name)
    return [Overlap(a, b, tuple(p), tuple(d)) for (a, b), (p, d) in found.items()]


def _parents(path: str) -> list[str]:
    """The folders above a normalized relative path, deepest first (`a/b/c` -> `a/b`, `a`)."""
    out = []
    cut = path.rfind("/")
    while cut > 0:
        path = path[:cut]
        out.append(path)
        cut = path.rfind("/")
    return out


def install_local(package: LocalPackage, root: Path, layout: VenvLayout) -> None:
    """A package from the mounted code: a `.pth` into /work and a dist-info generated from its metadata.

    Only metadata goes into the image, never code: editing the code changes nothing here; the same metadata gives
    the same bytes. A version from VCS has no dist-info here (it would name one commit's version): its `.pth` also
    puts LOCAL_METADATA on the path, where each run mounts the dist-info of the commit it runs.
    """
    from installer.scripts import Script  # noqa: PLC0415

    site = root / layout.site_packages
    site.mkdir(parents=True, exist_ok=True)
    code = PurePosixPath(WORKDIR, package.path)
    if package.version_from == "vcs":
        (root / PurePosixPath(LOCAL_METADATA).relative_to(VENV)).mkdir(exist_ok=True)  # the mount point
        (site / f"_envlock_local_{package.dist_name}.pth").write_text(f"{code}\n{LOCAL_METADATA}\n", encoding="utf-8")
    else:
        (site / f"_envlock_local_{package.dist_name}.pth").write_text(f"{code}\n", encoding="utf-8")
        write_dist_info(package, site)
    for group, name, value in package.entry_points:
        if group not in ("console_scripts", "gui_scripts"):
            continue
        module, _, attr = value.partition(":")
        section: Literal["console", "gui"] = "console" if group == "console_scripts" else "gui"
        script_name, data = Script(name, module.strip(), attr.strip(), section).generate(f"{VENV}/bin/python", "posix")
        (root / "bin").mkdir(exist_ok=True)
        (root / "bin" / script_name).write_bytes(data)
        (root / "bin" / script_name).chmod(0o755)


def write_dist_info(package: LocalPackage, folder: Path) -> Path:
    """The dist-info of a local package (METADATA, entry points, editable direct_url) in `folder`: in the image's
    site-packages, or in a run's LOCAL_METADATA folder for a version from VCS."""
    code = PurePosixPath(WORKDIR, package.path)
    try:
        version = str(Version(package.version))
    except InvalidVersion:
        version = package.version
    info = folder / f"{package.dist_name}-{version}.dist-info"
    info.mkdir()
    metadata = f"Metadata-Version: 2.1\nName: {package.name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in package.requires)
    files = {
        "METADATA": metadata,
        "INSTALLER": "envlock\n",
        "direct_url.json": json.dumps({"dir_info": {"editable": True}, "url": f"file://{code}"}) + "\n",
    }
    groups: dict[str, list[str]] = {}
    for group, name, value in package.entry_points:
        groups.setdefault(group, []).append(f"{name} = {value}")
    if groups:
        files["entry_points.txt"] = "".join(f"[{g}]\n" + "".join(f"{e}\n" for e in v) + "\n" for g, v in groups.items())
    for name, text in files.items():
        (info / name).write_text(text, encoding="utf-8")
    (info / "RECORD").write_text("".join(f"{info.name}/{n},,\n" for n in [*files, "RECORD"]), encoding="utf-8")
    return info
