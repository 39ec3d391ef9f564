"""Base images: envlock's own recipes (base-images/*.toml) or upstream images pinned by digest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from envlock.errors import EnvlockError
from envlock.fsutil import atomic_write_text

DEFAULT_BASE = "debian-bookworm"
_DIGEST_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?@sha256:(?P<digest>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Recipe:
    """A base built by envlock itself from a recipe file."""

    name: str
    python: str
    glibc: tuple[int, int]
    sha256: str
    packages: tuple[str, ...]
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    source_date_epoch: int = 1700000000
    system_packages: tuple[str, ...] = ()

    def including(self, system_packages: tuple[str, ...]) -> Recipe:
        """This recipe with the project's own Debian packages added."""
        return replace(self, system_packages=tuple(sorted(system_packages)))

    @property
    def key(self) -> str:
        """Names the base's inputs: the recipe file and the project's system packages."""
        blob = json.dumps([self.sha256, self.system_packages]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def recipes_dir() -> Path:
    """Where the base recipes live: shipped in the wheel, or the source checkout's base-images/."""
    packaged = Path(__file__).with_name("base_images")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "base-images"


def recipe_names() -> list[str]:
    """Names of the base recipes envlock knows."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name: str) -> Recipe:
    """Read one recipe by name; its identity is the sha256 of the file's bytes."""
    path = recipes_dir() / f"{name}.toml"
    data = path.read_bytes()
    table = tomllib.loads(data.decode("utf-8"))
    major, minor = str(table["glibc"]).split(".")
    return Recipe(
        name=name,
        python=str(table["python"]),
        glibc=(int(major), int(minor)),
        sha256=hashlib.sha256(data).hexdigest(),
        packages=tuple(table.get("packages", ())),
        suite=str(table["suite"]),
        mirror=str(table["mirror"]),
        source_date_epoch=int(table["source-date-epoch"]),
    )


def is_image_reference(base: str) -> bool:
    """True when base names an upstream image pinned by digest (`repo[:tag]@sha256:…`)."""
    return _DIGEST_REF.match(base) is not None


def check_base(base: str) -> str | None:
    """A problem with the base's spelling, or None."""
    if base in recipe_names() or is_image_reference(base):
        return None
    if "@sha256:" not in base and ("/" in base or ":" in base):
        return (
            f"base {base!r} is a movable tag; pin it by digest (`{base}@sha256:…`) "
            f"or use one of envlock's recipes: {', '.join(recipe_names())}"
        )
    return f"unknown base {base!r}; known recipes: {', '.join(recipe_names())}, or an image `repo@sha256:…`"


class ImageInspector(Protocol):
    """Reads an image's config from the container engine."""

    def image_env(self, ref: str) -> dict[str, str]:
        """The image's ENV as a mapping."""
        ...


@dataclass(frozen=True)
class BuiltBase:
    """A base made from a recipe: one layer tarball, its diff_id, and the Debian packages in it."""

    recipe: Recipe
    platform: str
    tar: Path
    diff_id: str
    packages: dict[str, str]

    def metadata(self) -> dict[str, Any]:
        """What the store keeps beside the tarball."""
        return {
            "recipe": self.recipe.name,
            "recipe-sha256": self.recipe.sha256,
            "system-packages": list(self.recipe.system_packages),
            "platform": self.platform,
            "diff-id": self.diff_id,
            "packages": self.packages,
        }


def debian_packages(tar: Path) -> dict[str, str]:
    """Installed Debian packages and versions, read from the tarball's dpkg status (no chroot needed)."""
    with tarfile.open(tar) as archive:
        member = next((m for m in archive.getmembers() if m.name.lstrip("./") == "var/lib/dpkg/status"), None)
        handle = archive.extractfile(member) if member else None
        text = handle.read().decode("utf-8") if handle else ""
    packages = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


class BaseBuilder(Protocol):
    """Makes a base root filesystem tarball from a recipe."""

    def available(self) -> bool:
        """Whether this machine can build bases at all."""
        ...

    def build(self, recipe: Recipe, platform: str, out: Path) -> None:
        """Write the root filesystem of recipe for platform into out."""
        ...


class MmdebstrapBuilder:
    """BaseBuilder through mmdebstrap from the Debian mirror, under the recipe's SOURCE_DATE_EPOCH."""

    def available(self) -> bool:
        """mmdebstrap is installed."""
        return shutil.which("mmdebstrap") is not None

    def build(self, recipe: Recipe, platform: str, out: Path) -> None:
        """Run mmdebstrap; its output is bit-identical for the same mirror state."""
        if shutil.which("mmdebstrap") is None:
            raise EnvlockError(
                "mmdebstrap is not installed: envlock builds its Debian bases with it",
                hint="sudo apt-get install mmdebstrap (or run bash scripts/setup.sh)",
            )
        arch = {"linux/amd64": "amd64", "linux/arm64": "arm64"}[platform]
        command = [
            "mmdebstrap", "--quiet", "--variant=minbase", f"--architectures={arch}",
            f"--include={','.join((*recipe.packages, *recipe.system_packages))}", recipe.suite, str(out), recipe.mirror,
        ]  # fmt: skip
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
            raise EnvlockError(
                f"mmdebstrap could not build base {recipe.name} for {platform}: {' / '.join(last)}",
                hint="check that the Debian mirror is reachable and that you are root (or have user namespaces)",
            )


class BaseStore:
    """Finished bases under the cache directory, by recipe hash and platform."""

    def __init__(self, root: Path, builder: BaseBuilder) -> None:
        self.root = root
        self.builder = builder

    def _paths(self, recipe: Recipe, platform: str) -> tuple[Path, Path]:
        stem = f"{recipe.name}-{recipe.key}-{platform.replace('/', '-')}"
        return self.root / f"{stem}.tar", self.root / f"{stem}.json"

    def get(self, recipe: Recipe, platform: str) -> BuiltBase | None:
        """A built base, or None."""
        tar, meta = self._paths(recipe, platform)
        if not (tar.is_file() and meta.is_file()):
            return None
        data = json.loads(meta.read_text(encoding="utf-8"))
        return BuiltBase(recipe, platform, tar, data["diff-id"], data["packages"])

    def ensure(self, recipe: Recipe, platform: str, rebuild: bool = False) -> BuiltBase:
        """The built base, building it first when missing; it appears in the store only once complete."""
        if not rebuild and (found := self.get(recipe, platform)) is not None:
            return found
        tar, meta = self._paths(recipe, platform)
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".building-") as tmp:
            partial = Path(tmp) / "rootfs.tar"
            self.builder.build(recipe, platform, partial)
            digest = hashlib.sha256()
            with partial.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            built = BuiltBase(recipe, platform, tar, "sha256:" + digest.hexdigest(), debian_packages(partial))
            partial.replace(tar)
            atomic_write_text(meta, json.dumps(built.metadata(), indent=2, sort_keys=True))
        return built

    def built(self) -> list[dict[str, Any]]:
        """Metadata of every base in the store."""
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.root.glob("*.json"))]
