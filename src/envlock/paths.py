"""Where envlock keeps things: the user's cache (wheels, layers, bases, scratch) and a project's `.envlock/`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
STATE_DIR = ".envlock"
LOCK_FILE = "envlock.lock"  # the project's lock, beside pyproject.toml; each run folder keeps a copy by this name

# One run's folder: `.envlock/runs/<run id>/` (a bundle's `run/`; a multi-node job's other nodes: `nodes/<rank>/`).
RECORD_FILE = "record.json"  # the run record
DIFF_FILE = "diff.patch"  # the uncommitted changes, when the code was dirty
LOG_FILE = "log.txt"  # the command's stdout and stderr
VERDICT_FILE = "verdict.json"  # `envlock reproduce`'s verdict, beside the record of the run it made
OUTPUTS_DIR = "outputs"  # copies of small metrics outputs (for comparisons within a tolerance)
NODES_DIR = "nodes"  # a multi-node job's other nodes, one folder per rank
ATTESTATION = "attestation.dsse.json"  # the signed statement about the run
SIGNER = "attestation.pub.pem"  # the signer's public key, beside: names who signed, never makes it trusted


def cache_root() -> Path:
    """`$ENVLOCK_CACHE_DIR`, else the user's cache directory (e.g. ~/.cache/envlock)."""
    if configured := os.environ.get("ENVLOCK_CACHE_DIR"):
        return Path(configured)
    from platformdirs import user_cache_path  # noqa: PLC0415  (only when no directory is configured)

    return user_cache_path("envlock")


@dataclass(frozen=True)
class CacheLayout:
    """The machine-wide, content-addressed cache: shared by every project of this user."""

    root: Path

    @property
    def wheels(self) -> Path:
        """Downloaded wheels by sha256."""
        return self.root / "wheels"

    @property
    def layers(self) -> Path:
        """Finished layer tarballs by content key."""
        return self.root / "layers"

    @property
    def bases(self) -> Path:
        """Bases built from recipes."""
        return self.root / "bases"

    @property
    def bytecode(self) -> Path:
        """Python bytecode written by runs, one folder per image ID (PYTHONPYCACHEPREFIX); never in an image."""
        return self.root / "pyc"

    @property
    def scratch(self) -> Path:
        """This user's temporary work (image assembly, upstream exports), `tmp/<uid>`, swept when stale: per user,
        so that one user's scratch is never in another's way on a shared cache."""
        return self.root / "tmp" / str(os.getuid())

    @property
    def roots(self) -> Path:
        """gc roots: one small file per project that locks, builds or runs with this cache (see image.roots)."""
        return self.root / "roots"

    @property
    def charliecloud(self) -> Path:
        """Image directories for Charliecloud's ch-run, one per image ID."""
        return self.root / "charliecloud"

    @property
    def build_backends(self) -> Path:
        """Projects' build backends: a venv per set of build requirements, and the metadata they gave."""
        return self.root / "build-backends"


@dataclass(frozen=True)
class ProjectLayout:
    """A project's own envlock state, under `<project>/.envlock/`."""

    project_dir: Path

    @property
    def state(self) -> Path:
        """The `.envlock/` directory itself."""
        return self.project_dir / STATE_DIR

    @property
    def runs(self) -> Path:
        """Run records, one directory per run id."""
        return self.state / "runs"

    @property
    def images(self) -> Path:
        """`images.json`: lock hash → image ID and pushed digests."""
        return self.state / "images.json"

    @property
    def lock(self) -> Path:
        """The project's `envlock.lock` (beside pyproject.toml, not under `.envlock/`)."""
        return self.project_dir / LOCK_FILE

    @property
    def attestations(self) -> Path:
        """Image provenance statements, one `<image-id hex>.dsse.json` per image."""
        return self.state / "attestations"

    @property
    def archives(self) -> Path:
        """Verified image archives (`envlock archive`)."""
        return self.state / "archives"

    @property
    def objects(self) -> Path:
        """Content-addressed copies of what a run saw (untracked code): `objects/sha256/ab/<hex>`, shared by runs."""
        return self.state / "objects"

    @property
    def local_metadata(self) -> Path:
        """The dist-info a run mounts for own packages versioned by VCS: `local-metadata/<sha256 of its files>/`."""
        return self.state / "local-metadata"

    @property
    def chains(self) -> Path:
        """Chain re-runs (`envlock reproduce --chain`): one verdict per chain id, and their staging folders."""
        return self.state / "chains"

    @property
    def input_stats(self) -> Path:
        """The inputs' stat cache: (path, size, mtime_ns, inode) → sha256, so unchanged data is not read again."""
        return self.state / "cache" / "input-stats.json"

    def archive_for(self, image_id: str) -> Path:
        """The default archive file of an image."""
        return self.archives / f"{image_id.removeprefix('sha256:')[:12]}.tar"


def recipes_dir() -> Path:
    """The base recipes: shipped inside the package (a wheel install), or the source checkout's base-images/."""
    packaged = PACKAGE_DIR / "base_images"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parents[1] / "base-images"


def data_file(name: str) -> Path:
    """A data table shipped with envlock (src/envlock/data/)."""
    return PACKAGE_DIR / "data" / name
