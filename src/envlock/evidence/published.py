"""A run's evidence in the registry, beside its image: one OCI 1.1 artifact per run whose `subject` is the image
manifest the run used, so the image's referrers list it next to the image's SBOM and provenance.

The artifact (`artifactType` RUN_TYPE, empty config) has three layers:

    RECORD_TYPE     record.json, as the run wrote it (a listing can read it without the rest)
    DSSE_TYPE       the run's attestation (the signed statement over the whole record and every file)
    BUNDLE_TYPE     the run's bundle (envlock.evidence.bundle): record, attestation, lock copy, log, saved code
                    (git bundle of the commit, patch, untracked files), inputs manifest, SBOM, image provenance and
                    the declared outputs up to OUTPUT_MAX_BYTES each (larger ones by digest only)

and annotations (run id, lock hash, status, time) that `envlock runs --registry` lists from the manifests alone.
A receiver downloads the bundle by digest and hands it to the hostile-bundle path (envlock.safetar, the names
checked, verified under the receiver's trust, rebuilt confined): nothing in the registry is trusted for being
there.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from envlock.engine.docker import Engine
from envlock.errors import BundleError, RegistryError, UsageError
from envlock.evidence.attest import Checks
from envlock.evidence.bundle import Unpacked, check_names, make_bundle, verify_unpacked
from envlock.evidence.trust import Trust
from envlock.fsutil import cache_writes, copy_confined, owned_prefix, sha256_file, shared_scratch, sweep_stale
from envlock.image.provenance import attestation_path
from envlock.image.referrers import (
    DSSE_TYPE,
    Layer,
    Referrer,
    checked_referrers,
    manifest_by_digest,
    push_artifact,
    split_pushed,
)
from envlock.image.registry import OCI_INDEX, Blob, Registry, split_target
from envlock.paths import ATTESTATION, RECORD_FILE, CacheLayout, ProjectLayout
from envlock.report import Report, silent
from envlock.run.records import RunStore
from envlock.safetar import parse_amount

RUN_TYPE = "application/vnd.envlock.run.v1+json"
RECORD_TYPE = "application/vnd.envlock.run.record.v1+json"
BUNDLE_TYPE = "application/vnd.envlock.bundle.v1.tar"
OUTPUT_MAX_BYTES = 64 << 20  # each declared output up to this is published; larger ones by digest only
# A pulled bundle declaring more than this is refused before a byte is downloaded, and the download is cut off at
# what it declares; it streams into the user's scratch, never into memory. Overridden by PULL_MAX_ENV (bytes, or
# with a K/M/G/T suffix).
PULL_MAX_BYTES = 4 << 30
PULL_MAX_ENV = "ENVLOCK_PULL_MAX_BYTES"
_PULL_PREFIX = "pulled-"

RUN_ID = "dev.envlock.run.id"
LOCK_HASH = "dev.envlock.lock.hash"
STATUS = "dev.envlock.run.status"
CREATED = "org.opencontainers.image.created"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Published:
    """A run pushed: where its artifact is (`host/repository@sha256:…`), the image it refers to, bytes sent."""

    ref: str
    subject: str
    size: int
    left_out: tuple[str, ...]  # outputs published by digest only


@dataclass(frozen=True)
class Location:
    """A registry repository: its host and its path."""

    host: str
    repository: str

    def ref(self, digest: str) -> str:
        """`host/repository@digest`."""
        return f"{self.host}/{self.repository}@{digest}"


def location_of(target: str) -> Location:
    """`host[:port]/repository` → a Location (the repository is required: a registry holds many)."""
    host, repository = split_target(target)
    if not repository:
        raise UsageError(f"{target!r} names no repository", hint="write it as host[:port]/repository")
    return Location(host, repository)


def parse_ref(ref: str) -> tuple[Location, str]:
    """`host[:port]/repository@sha256:…` → (its location, the digest)."""
    name, _, digest = ref.partition("@")
    if not _DIGEST.fullmatch(digest):
        raise UsageError(f"{ref!r} is not REGISTRY/REPO@sha256:<64 hex>", hint="envlock runs --registry REGISTRY/REPO")
    return location_of(name), digest


def image_location(repo_digests: list[str], to: str | None) -> tuple[Location, str]:
    """Where a run's evidence goes and the image manifest it refers to: the image's pushed digest (the one in
    `to` when given; else the last pushed)."""
    if not repo_digests:
        raise RegistryError(
            "the run's image was never pushed: its evidence has no image manifest in a registry to refer to",
            hint="envlock build --push (the record keeps where the image went), then run again and push that run",
        )
    pushed = [split_pushed(d) for d in repo_digests]
    if to is None:
        host, repository, digest = pushed[-1]
        return Location(host, repository), digest
    wanted = location_of(to)
    same = [d for h, r, d in pushed if (h, r) == (wanted.host, wanted.repository)]
    # envlock pushes each image's manifest canonically: the same digest wherever it went
    return wanted, (same or [pushed[-1][2]])[-1]


def publish_run(
    project_dir: Path,
    run_id: str,
    *,
    registry: Callable[[str], Registry],
    engine: Callable[[], Engine],
    scratch: Path,
    to: str | None = None,
    max_output_bytes: int = OUTPUT_MAX_BYTES,
) -> Published:
    """`envlock push RUN`: the run's bundle, record and attestation as one artifact referring to its image."""
    store = RunStore(project_dir)
    record = store.load(run_id)
    place, subject = image_location(list(record.repo_digests), to)
    client = registry(place.host)
    if client.manifest(place.repository, subject) is None:
        raise RegistryError(
            f"the image of run {record.run_id} ({subject[:19]}) is not in {place.host}/{place.repository}",
            hint=f"push the image there first: envlock build --push --registry {place.host}/…",
        )
    bundle = scratch / f"{record.run_id}.tar"
    manifest = make_bundle(project_dir, record.run_id, bundle, engine=engine, max_output_bytes=max_output_bytes)
    run_dir = store.directory(record.run_id)
    layers = [
        _layer(RECORD_TYPE, run_dir / RECORD_FILE),
        _layer(DSSE_TYPE, run_dir / ATTESTATION),
        _layer(BUNDLE_TYPE, bundle),
    ]
    annotations = {
        RUN_ID: record.run_id,
        LOCK_HASH: record.lock_hash,
        STATUS: record.status,
        CREATED: record.ended or record.started,
    }
    digest = push_artifact(client, place.repository, subject, RUN_TYPE, layers, annotations=annotations)
    left_out = tuple(sorted(manifest.get("outputs-by-digest") or {}))
    return Published(place.ref(digest), subject, sum(x.blob.size for x in layers), left_out)


def _layer(media_type: str, path: Path) -> Layer:
    return Layer(media_type, Blob("sha256:" + sha256_file(path), path.stat().st_size, path=path))


@dataclass(frozen=True)
class PublishedRun:
    """A run's artifact as a listing shows it (its annotations: what the pusher said, not yet verified)."""

    ref: str
    subject: str
    run_id: str
    lock_hash: str
    status: str
    created: str


def _described(place: Location, referrer: Referrer) -> PublishedRun:
    notes = referrer.annotations
    return PublishedRun(
        place.ref(referrer.digest),
        referrer.subject,
        notes.get(RUN_ID, "?"),
        notes.get(LOCK_HASH, "?"),
        notes.get(STATUS, "?"),
        notes.get(CREATED, ""),
    )


def list_runs(
    registry: Registry,
    place: Location,
    *,
    image: str | None = None,
    lock: str | None = None,
    report: Report = silent,
) -> list[PublishedRun]:
    """The runs published for an image (its manifest digest), for a lock (its hash or a prefix), or for every
    image in the repository; oldest first. Referrers that fail their checks are reported and left out."""
    if image is not None and not _DIGEST.fullmatch(image):
        raise UsageError(f"--image {image!r} is not sha256:<64 hex> (an image manifest's digest)")
    wanted_lock = _lock_prefix(lock) if lock is not None else None
    subjects = [image] if image else _images(registry, place, wanted_lock)
    runs: dict[str, PublishedRun] = {}
    for subject in subjects:
        found, refused = checked_referrers(registry, place.repository, subject, RUN_TYPE)
        for line in refused:
            report(f"refused: {line}")
        for referrer in found:
            run = _described(place, referrer)
            if wanted_lock is None or run.lock_hash.removeprefix("sha256:").startswith(wanted_lock):
                runs[run.ref] = run
    return sorted(runs.values(), key=lambda r: (r.created, r.run_id))


def _lock_prefix(lock: str) -> str:
    hexits = lock.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{12,64}", hexits):
        raise UsageError(f"--lock {lock!r} is not a lock hash (at least its first 12 hex digits)")
    return hexits


def _images(registry: Registry, place: Location, lock: str | None) -> list[str]:
    """The image manifests the repository's tags name (a lock's own tags when `lock` is given: envlock tags an
    image with its lock hash's first 12 hex digits); an index stands for the manifests it lists."""
    tags = [t for t in registry.tags(place.repository) if not t.startswith("sha256-")]
    if lock is not None:
        tags = [t for t in tags if t.split("-")[0] == lock[:12]]
    digests: list[str] = []
    for tag in tags:
        try:
            manifest = manifest_by_digest(registry, place.repository, _tag_digest(registry, place, tag))
        except RegistryError:
            continue
        if manifest.document.get("mediaType") == OCI_INDEX:
            listed = manifest.document.get("manifests")
            digests += [str(d.get("digest")) for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
        else:
            digests.append(manifest.digest)
    return list(dict.fromkeys(d for d in digests if _DIGEST.fullmatch(d)))


def _tag_digest(registry: Registry, place: Location, tag: str) -> str:
    import hashlib  # noqa: PLC0415

    manifest = registry.manifest(place.repository, tag)
    if manifest is None:
        raise RegistryError(f"no manifest for the tag {tag}")
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


@dataclass(frozen=True)
class Fetched:
    """A published run downloaded: its bundle file (checked by digest), the image it refers to, its listing."""

    bundle: Path
    run: PublishedRun
    image_ref: str  # host/repository@<the subject's digest>: the image to pull
    image_config: str  # the subject manifest's config digest: the image ID the signed record must name
    size: int


def pull_cap(environ: Mapping[str, str]) -> int:
    """The most bytes a pulled bundle may have: PULL_MAX_ENV if set, else PULL_MAX_BYTES."""
    text = environ.get(PULL_MAX_ENV, "").strip()
    return parse_amount(PULL_MAX_ENV, text) if text else PULL_MAX_BYTES


def fetch_run(
    registry: Registry, ref: str, out_dir: Path, report: Report = silent, *, max_bytes: int = PULL_MAX_BYTES
) -> Fetched:
    """A published run by its artifact's digest (or by its image's, when exactly one run refers to it): the
    manifest checked by digest, type and subject, then the bundle streamed into `out_dir` (at most `max_bytes`,
    checked by digest on the way)."""
    place, digest = parse_ref(ref)
    artifact = manifest_by_digest(registry, place.repository, digest)
    if artifact.artifact_type != RUN_TYPE:
        artifact = _only_run_of(registry, place, artifact, report)
    subject = manifest_by_digest(registry, place.repository, artifact.subject)
    config = subject.document.get("config")
    image_config = str(config.get("digest", "")) if isinstance(config, dict) else ""
    if not _DIGEST.fullmatch(image_config):
        raise RegistryError(f"refused: the run {artifact.digest[:19]} refers to {artifact.subject[:19]}, not an image")
    bundles = [x for x in artifact.layers if x.get("mediaType") == BUNDLE_TYPE]
    if len(bundles) != 1:
        raise RegistryError(f"refused: the run artifact {artifact.digest[:19]} has {len(bundles)} bundle layers, not 1")
    blob, size = str(bundles[0].get("digest", "")), bundles[0].get("size")
    if not _DIGEST.fullmatch(blob) or type(size) is not int or size < 0:
        raise RegistryError(f"refused: the run artifact {artifact.digest[:19]} describes no bundle blob (digest, size)")
    if size > max_bytes:
        raise BundleError(
            f"refused: the run's bundle {blob[:19]} is {size} bytes, over the pull cap of {max_bytes} bytes",
            hint=f"if you trust its source and have the space, raise the cap: {PULL_MAX_ENV}=… (K/M/G/T suffixes are "
            f"powers of 1024; default {PULL_MAX_BYTES >> 30}G)",
        )
    out = out_dir / "run.tar"
    if not registry.blob_into(place.repository, blob, out, size):
        raise RegistryError(f"the registry has no blob {blob[:19]} in {place.repository}")
    return Fetched(out, _described(place, artifact), place.ref(artifact.subject), image_config, size)


@contextlib.contextmanager
def downloaded(
    registry: Registry, ref: str, report: Report = silent, *, cache: CacheLayout, max_bytes: int = PULL_MAX_BYTES
) -> Iterator[Fetched]:
    """fetch_run into a folder of this user's scratch in `cache` that lasts for the block (what a killed pull left
    there is swept first); a cache this user cannot write is one CacheNotWritableError."""
    with cache_writes("pulling a run", cache.root, "a pull"):
        shared_scratch(cache.scratch)
        sweep_stale(cache.scratch, _PULL_PREFIX)
        folder = Path(tempfile.mkdtemp(prefix=owned_prefix(_PULL_PREFIX), dir=cache.scratch))
    try:
        yield fetch_run(registry, ref, folder, report, max_bytes=max_bytes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _only_run_of(registry: Registry, place: Location, manifest: Referrer, report: Report) -> Referrer:
    """An image's digest given for a run: the one run that refers to it (none or several: say so)."""
    if manifest.document.get("artifactType") is not None or manifest.subject:
        raise RegistryError(f"refused: {manifest.digest[:19]} is neither a published run nor an image")
    found, refused = checked_referrers(registry, place.repository, manifest.digest, RUN_TYPE)
    for line in refused:
        report(f"refused: {line}")
    if len(found) != 1:
        raise UsageError(
            f"{len(found)} runs are published for the image {manifest.digest[:19]}: name one by its own digest",
            hint=f"envlock runs --registry {place.host}/{place.repository} --image {manifest.digest}",
        )
    return found[0]


def verify_fetched(found: Unpacked, fetched: Fetched, trust: Trust, engine: Callable[[], Engine | None]) -> Checks:
    """The downloaded bundle verified as any bundle from elsewhere, and its signed record's image checked to be the
    image its artifact refers to (the subject's config digest is the image ID)."""
    checks = verify_unpacked(found, trust, engine)
    signed = checks.signed_record or {}
    checks.expect("the image the registry artifact refers to (by ID)", signed.get("image_id"), fetched.image_config)
    checks.expect("the run id the registry artifact names", signed.get("run_id"), fetched.run.run_id)
    return checks


def store_pulled(found: Unpacked, bundle: Path, project_dir: Path) -> str:
    """A verified, downloaded run into the project's run store: its folder and saved untracked files (copied
    without following a link), its image provenance, and the bundle itself under .envlock/pulled/ (its outputs
    and code: `envlock verify` and `envlock reproduce` take it). Returns the run id."""
    run_id = check_names(found)
    layout = ProjectLayout(project_dir)
    if RunStore(project_dir).directory(run_id).exists():
        raise UsageError(f"run {run_id} is already in this project's run store", hint="envlock runs show " + run_id)
    project_dir.mkdir(parents=True, exist_ok=True)
    copy_confined(found.root / "run", project_dir, _under(layout.runs / run_id, project_dir))
    # What the project has already stays as it is: its saved copies (content-addressed, and its own runs' evidence)
    # and its image provenance (perhaps signed here: a bundle's, whose origin verify does not require, never
    # replaces it).
    objects = found.root / "objects"
    for saved in sorted(p for p in objects.rglob("*") if p.is_file()) if objects.is_dir() else ():
        target = layout.objects / saved.relative_to(objects)
        if not (target.exists() or target.is_symlink()):
            copy_confined(saved, project_dir, _under(target, project_dir))
    provenance = attestation_path(project_dir, str(found.manifest["image"]["id"]))
    if (found.root / "image.dsse.json").is_file() and not (provenance.exists() or provenance.is_symlink()):
        copy_confined(found.root / "image.dsse.json", project_dir, _under(provenance, project_dir))
    copy_confined(bundle, project_dir, _under(pulled_bundle(project_dir, run_id), project_dir))
    return run_id


def pulled_bundle(project_dir: Path, run_id: str) -> Path:
    """Where `envlock pull` keeps a pulled run's bundle."""
    return ProjectLayout(project_dir).state / "pulled" / f"{run_id}.tar"


def _under(path: Path, project: Path) -> str:
    return path.relative_to(project).as_posix()
