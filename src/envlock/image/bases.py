"""The base store: bases built from recipes (mmdebstrap) and upstream bases exported from the engine."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from envlock.engine.archive import ArchivedImage, ImageArchive
from envlock.engine.docker import save_file
from envlock.errors import BuildError
from envlock.fsutil import (
    atomic_write_text,
    disk_full,
    exclusive,
    make_dirs,
    owned_prefix,
    read_json,
    share,
    share_folder,
)
from envlock.image.layers import Layer
from envlock.report import Report, silent

if TYPE_CHECKING:
    from envlock.engine.docker import Engine
    from envlock.image.layers import LayerStore
from envlock.lock.recipes import Recipe
from envlock.lock.targets import emulated, host_platform


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


def _dpkg_status(tar: Path) -> str | None:
    with tarfile.open(tar) as archive:
        member = next((m for m in archive.getmembers() if m.name.lstrip("./") == "var/lib/dpkg/status"), None)
        handle = archive.extractfile(member) if member else None
        return handle.read().decode("utf-8") if handle else None


def debian_packages(*layer_tars: Path) -> dict[str, str]:
    """Installed Debian packages and versions from the dpkg status in the layers (the upper one wins)."""
    text = ""
    for tar in layer_tars:
        text = _dpkg_status(tar) or text
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

    def builds_for(self, platform: str) -> bool:
        """Whether it can build `platform`'s root filesystem here (a foreign one needs emulation)."""
        ...


class MmdebstrapBuilder:
    """BaseBuilder through mmdebstrap from the Debian mirror, under the recipe's SOURCE_DATE_EPOCH."""

    def available(self) -> bool:
        """mmdebstrap is installed."""
        return shutil.which("mmdebstrap") is not None

    def builds_for(self, platform: str) -> bool:
        """mmdebstrap runs a foreign architecture's maintainer scripts under qemu's binfmt handler."""
        return self.available() and emulated(platform)

    def build(self, recipe: Recipe, platform: str, out: Path) -> None:
        """Run mmdebstrap; its output is bit-identical for the same mirror state."""
        if shutil.which("mmdebstrap") is None:
            raise BuildError(
                "mmdebstrap is not installed: envlock builds its Debian bases with it",
                hint="sudo apt-get install mmdebstrap (or run bash scripts/setup.sh)",
            )
        if not emulated(platform):
            raise BuildError(
                f"this {host_platform()} machine cannot run {platform} programs, which building its base needs",
                hint="install qemu-user-static, binfmt-support and arch-test and mount binfmt_misc "
                f"(bash scripts/setup.sh does), or build on a {platform} machine",
            )
        arch = {"linux/amd64": "amd64", "linux/arm64": "arm64"}[platform]
        command = [
            "mmdebstrap", "--quiet", "--variant=minbase", f"--architectures={arch}",
            f"--include={','.join((*recipe.packages, *recipe.system_packages))}", recipe.suite, str(out), recipe.mirror,
        ]  # fmt: skip
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
        done = _run_apart(command, env)
        if done.returncode != 0 and "No space left on device" in done.stderr:
            full = OSError(errno.ENOSPC, "No space left on device", str(out))
            raise disk_full(f"building base {recipe.name} for {platform} with mmdebstrap", full, (out.parent,))
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
            raise BuildError(
                f"mmdebstrap could not build base {recipe.name} for {platform}: {' / '.join(last)}",
                hint=room_hint(out.parent)
                or "check that the Debian mirror is reachable and that you are root (or have user namespaces)",
            )


# A base's rootfs tar is ~220 MB; with less room than this where it goes, a failure is most likely the disk's (with
# --quiet, mmdebstrap says only "failed to run", and its partial tar is gone, its space free again, when it ends).
BASE_ROOM_BYTES = 512 << 20


def room_hint(folder: Path) -> str:
    """The hint for a failed base build where the disk is the likely cause: how little room there is; else ""."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free >= BASE_ROOM_BYTES:
        return ""
    if folder.name.startswith(".building-"):  # the store's own work folder: the store is the place to name
        folder = folder.parent
    return (
        f"only {free // (1 << 20)} MiB free in {folder}, and a base takes ~220 MB there: free some space, or set "
        "ENVLOCK_CACHE_DIR to a folder on a larger disk"
    )


def _run_apart(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """mmdebstrap in a process group of its own: when it fails (a full disk, the mirror gone) it sends SIGHUP to its
    whole group (`kill HUP => -getpgrp()`), which would end envlock with it (exit 129, its work folders left behind).
    When envlock stops first (Ctrl-C, SIGTERM), mmdebstrap is told to stop and given time to clean up after itself."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=MMDEBSTRAP_CLEANUP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# How long a stopped mmdebstrap may take to remove its own work (unmounts, its temp folder) before it is killed.
MMDEBSTRAP_CLEANUP_S = 30


class BaseStore:
    """Finished bases under the cache directory, by recipe hash and platform."""

    def __init__(self, root: Path, builder: BaseBuilder) -> None:
        self.root = root
        self.builder = builder

    def _paths(self, recipe: Recipe, platform: str) -> tuple[Path, Path]:
        stem = f"{recipe.name}-{recipe.key}-{platform.replace('/', '-')}"
        return self.root / f"{stem}.tar", self.root / f"{stem}.json"

    def available(self) -> bool:
        """Whether this store can build bases here (its builder's tool is installed)."""
        return self.builder.available()

    def builds_for(self, platform: str) -> bool:
        """Whether this store can build `platform`'s base here."""
        return self.builder.builds_for(platform)

    def get(self, recipe: Recipe, platform: str) -> BuiltBase | None:
        """A built base, or None."""
        tar, meta = self._paths(recipe, platform)
        if not (tar.is_file() and meta.is_file()):
            return None
        data = read_json(meta)
        if not isinstance(data, dict) or "diff-id" not in data or "packages" not in data:
            return None  # damaged metadata: the base is built again
        return BuiltBase(recipe, platform, tar, data["diff-id"], data["packages"])

    def ensure(self, recipe: Recipe, platform: str, rebuild: bool = False, report: Report = silent) -> BuiltBase:
        """The built base, building it first when missing; it appears in the store only once complete. One build of
        a base at a time on this cache (a flock): a second process waits for the first's and takes it."""
        if not rebuild and (found := self.get(recipe, platform)) is not None:
            return found
        tar, meta = self._paths(recipe, platform)
        make_dirs(self.root)

        def waiting() -> None:
            report(f"waiting for another envlock building base {recipe.name} for {platform}")

        with exclusive(self.root / "locks" / f"{tar.stem}.lock", waiting):
            if not rebuild and (found := self.get(recipe, platform)) is not None:
                return found  # built by the process this one waited for
            return self._build(recipe, platform, tar, meta)

    def _build(self, recipe: Recipe, platform: str, tar: Path, meta: Path) -> BuiltBase:
        with tempfile.TemporaryDirectory(dir=self.root, prefix=owned_prefix(".building-")) as tmp:
            share_folder(Path(tmp))
            partial = Path(tmp) / "rootfs.tar"
            self.builder.build(recipe, platform, partial)
            digest = hashlib.sha256()
            with partial.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            built = BuiltBase(recipe, platform, tar, "sha256:" + digest.hexdigest(), debian_packages(partial))
            share(partial, self.root)
            partial.replace(tar)
            atomic_write_text(meta, json.dumps(built.metadata(), indent=2, sort_keys=True))
        return built

    def built(self) -> list[dict[str, Any]]:
        """Metadata of every base in the store; a damaged entry is left out (the next build of it remakes it)."""
        keys = ("recipe", "recipe-sha256", "platform", "diff-id", "packages")
        found = [read_json(p) for p in sorted(self.root.glob("*.json"))]
        return [entry for entry in found if isinstance(entry, dict) and all(k in entry for k in keys)]


@dataclass(frozen=True)
class UpstreamBase:
    """An upstream image base, exported from the engine: its ID, its layers (verified), ENV and Debian packages."""

    ref: str
    image_id: str
    architecture: str
    layers: list[tuple[str, Path]]  # (diff_id, tar in the layer store)
    env: dict[str, str]
    packages: dict[str, str]
    python_homes: dict[str, str]  # "3.11" → "/usr/local/bin"


def cached_upstream(ref: str, engine: Engine, layers: LayerStore) -> UpstreamBase | None:
    """The upstream base as exported before into the layer store, reading only; None when the engine lacks it or
    the export is missing or damaged."""
    image_id = engine.image_id(ref)
    if image_id is None:
        return None
    data = read_json(layers.root / f"upstream-{image_id.removeprefix('sha256:')}.json")
    keys = ("diff-ids", "architecture", "env", "packages", "python-homes")
    if not (isinstance(data, dict) and all(key in data for key in keys)):
        return None
    found = [(d, layers.get("base-" + d.removeprefix("sha256:"))) for d in data["diff-ids"]]
    if any(layer is None for _, layer in found):
        return None
    return UpstreamBase(
        ref, image_id, data["architecture"], [(d, layer.tar) for d, layer in found if layer],
        data["env"], data["packages"], data["python-homes"],
    )  # fmt: skip


def export_upstream(ref: str, engine: Engine, layers: LayerStore, scratch: Path) -> UpstreamBase:
    """Take the base from the engine (pulled by digest if absent), export it, check each layer against its diff_id."""
    if engine.image_id(ref) is None:
        engine.pull(ref)
    if (found := cached_upstream(ref, engine, layers)) is not None:
        return found  # else missing or damaged: export again
    image_id = engine.image_id(ref) or ""
    cached = layers.root / f"upstream-{image_id.removeprefix('sha256:')}.json"
    archive = scratch / "upstream.tar"
    save_file(engine, ref, archive)
    with ImageArchive(archive, f"the engine's export of {ref}") as saved:
        image = saved.image(image_id)
        parts = [(d, _kept_layer(saved, image, index, layers).tar) for index, d in enumerate(image.config.diff_ids)]
    archive.unlink()
    config = image.config.document
    tars = [tar for _, tar in parts]
    base = UpstreamBase(
        ref=ref,
        image_id=image_id,
        architecture=str(config.get("architecture", "")),
        layers=parts,
        env=dict(item.partition("=")[::2] for item in config.get("config", {}).get("Env") or []),
        packages=debian_packages(*tars),
        python_homes=_python_homes(tars),
    )
    record = {
        "ref": ref,
        "architecture": base.architecture,
        "diff-ids": [d for d, _ in parts],
        "env": base.env,
        "packages": base.packages,
        "python-homes": base.python_homes,
    }
    atomic_write_text(cached, json.dumps(record, indent=2, sort_keys=True))
    return base


def _kept_layer(saved: ImageArchive, image: ArchivedImage, index: int, layers: LayerStore) -> Layer:
    """A base layer in the layer store (by its diff_id), copied there through a stream verified against it."""
    diff_id = image.config.diff_ids[index]
    key = "base-" + diff_id.removeprefix("sha256:")

    def extract(out: Path) -> Layer:
        layer = saved.layer(image, index)
        with out.open("wb") as target:
            while chunk := layer.read(1 << 20):
                target.write(chunk)
        return Layer(out, diff_id, out.stat().st_size)

    return layers.get(key) or layers.put(key, extract)


def _python_homes(layer_tars: list[Path]) -> dict[str, str]:
    """Each `pythonX.Y` in /usr/bin or /usr/local/bin of the layers (the upper layer wins)."""
    homes: dict[str, str] = {}
    pattern = re.compile(r"^(usr/(?:local/)?bin)/python(3\.\d+)$")
    for tar in layer_tars:
        with tarfile.open(tar) as layer:
            for name in layer.getnames():
                if match := pattern.match(name.lstrip("./")):
                    homes[match.group(2)] = "/" + match.group(1)
    return homes
