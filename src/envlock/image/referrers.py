"""An image's SBOM and provenance in the registry, as OCI 1.1 artifacts that refer to its manifest.

Each artifact is a manifest with an `artifactType`, an empty config, one layer (the document) and a `subject` (the
image manifest). Registries with the referrers API index them by themselves; on the others (Debian's registry,
distribution 2.8) the referrers tag schema is the fallback: the tag `sha256-<hex of the image manifest digest>`
holds an OCI index of the referring manifests, which envlock reads, extends and writes back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from envlock.engine.archive import sha256_digest
from envlock.errors import RegistryError
from envlock.image.registry import OCI_INDEX, OCI_MANIFEST, Blob, Registry, verified_manifest

EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
DOCUMENT_MAX_BYTES = 256 << 20  # an SBOM or an envelope: anything larger is not one


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: `sha256:abc…` → `sha256-abc…`."""
    algorithm, _, hexits = digest.partition(":")
    return f"{algorithm}-{hexits}"


@dataclass(frozen=True)
class Artifact:
    """A document that refers to an image: its artifact type and its bytes."""

    artifact_type: str
    data: bytes


def artifact_manifest(artifact: Artifact, subject_digest: str, subject_size: int) -> bytes:
    """The OCI 1.1 manifest of an artifact referring to `subject_digest`."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": [
            {"mediaType": artifact.artifact_type, "digest": sha256_digest(artifact.data), "size": len(artifact.data)}
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
    }
    return _canonical(manifest)


def push_referrers(registry: Registry, repository: str, subject_digest: str, artifacts: list[Artifact]) -> list[str]:
    """Push each artifact referring to the image manifest `subject_digest`, then the fallback index when the
    registry has no referrers API; returns the artifact manifests' digests."""
    subject = _subject(registry, repository, subject_digest)
    descriptors: list[dict[str, Any]] = []
    for artifact in artifacts:
        for blob in (EMPTY_CONFIG, artifact.data):
            if not registry.has_blob(repository, sha256_digest(blob)):
                registry.put_blob(repository, Blob(sha256_digest(blob), len(blob), data=blob))
        manifest = artifact_manifest(artifact, subject_digest, len(subject))
        descriptors.append(_put_artifact(registry, repository, manifest, artifact.artifact_type, {}))
    _list_in_fallback(registry, repository, subject_digest, descriptors)
    return [str(d["digest"]) for d in descriptors]


@dataclass(frozen=True)
class Layer:
    """One layer of a many-layer artifact: its media type and its blob (bytes or a file)."""

    media_type: str
    blob: Blob


def push_artifact(
    registry: Registry,
    repository: str,
    subject_digest: str,
    artifact_type: str,
    layers: list[Layer],
    *,
    annotations: dict[str, str],
) -> str:
    """Push one artifact of several layers referring to `subject_digest` (and list it in the fallback index where
    the registry has no referrers API); returns its manifest's digest."""
    subject = _subject(registry, repository, subject_digest)
    config = Blob(sha256_digest(EMPTY_CONFIG), len(EMPTY_CONFIG), data=EMPTY_CONFIG)
    for blob in [config, *(layer.blob for layer in layers)]:
        if not registry.has_blob(repository, blob.digest):
            registry.put_blob(repository, blob)
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": x.media_type, "digest": x.blob.digest, "size": x.blob.size} for x in layers],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject)},
            "annotations": annotations,
        }
    )
    descriptor = _put_artifact(registry, repository, manifest, artifact_type, annotations)
    _list_in_fallback(registry, repository, subject_digest, [descriptor])
    return str(descriptor["digest"])


def _subject(registry: Registry, repository: str, subject_digest: str) -> bytes:
    subject = registry.manifest(repository, subject_digest)
    if subject is None or sha256_digest(subject) != subject_digest:
        raise RegistryError(
            f"the registry has no manifest {subject_digest[:19]} in {repository} to refer to",
            hint="push the image there first (envlock build --push --registry …)",
        )
    return subject


def _put_artifact(
    registry: Registry, repository: str, manifest: bytes, artifact_type: str, annotations: dict[str, str]
) -> dict[str, Any]:
    """Store an artifact manifest by its digest; returns its descriptor (as a referrers index lists it)."""
    digest = registry.put_manifest(repository, sha256_digest(manifest), manifest)
    if digest != sha256_digest(manifest):
        raise RegistryError(f"the registry reports digest {digest} for an artifact of digest {sha256_digest(manifest)}")
    descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "artifactType": artifact_type}
    return descriptor | ({"annotations": annotations} if annotations else {})


FALLBACK_TRIES = 5


def _list_in_fallback(
    registry: Registry, repository: str, subject_digest: str, descriptors: list[dict[str, Any]]
) -> None:
    """Add the descriptors to the tag-schema index (where the registry has no referrers API). The index is
    read-modify-write and the distribution API has no conditional PUT, so a parallel writer can overwrite ours:
    after each write the index is read back, and the merge is written again until it lists every descriptor."""
    if registry.referrers(repository, subject_digest) is not None:
        return
    tag = fallback_tag(subject_digest)
    wanted = {str(d["digest"]) for d in descriptors}
    for _ in range(FALLBACK_TRIES):
        existing = registry.manifest(repository, tag)
        listed = _listed(existing)
        known = {str(d.get("digest")) for d in listed}
        if wanted <= known:
            return
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []} | (
            json.loads(existing) if existing else {}
        )
        index["manifests"] = [*listed, *(d for d in descriptors if d["digest"] not in known)]
        registry.put_manifest(repository, tag, _canonical(index), OCI_INDEX)
    if not wanted <= {str(d.get("digest")) for d in _listed(registry.manifest(repository, tag))}:
        raise RegistryError(
            f"the referrers index {tag} of {repository} kept losing entries to other writers ({FALLBACK_TRIES} tries)",
            hint="push again when the other pushes to this image are done",
        )


def _listed(index: bytes | None) -> list[dict[str, Any]]:
    if index is None:
        return []
    try:
        document = json.loads(index)
    except ValueError:
        return []
    manifests = document.get("manifests") if isinstance(document, dict) else None
    return [d for d in manifests if isinstance(d, dict)] if isinstance(manifests, list) else []


@dataclass(frozen=True)
class Referrer:
    """An artifact manifest that refers to a subject, fetched by its digest and checked against it."""

    digest: str
    document: dict[str, Any]

    @property
    def artifact_type(self) -> str:
        """The artifact's type (for a one-layer artifact without one: its layer's media type)."""
        layers = self.layers
        fallback = str(layers[0].get("mediaType", "")) if len(layers) == 1 else ""
        return str(self.document.get("artifactType") or fallback)

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The layer descriptors (only well-formed ones: a digest string and an integer size)."""
        found = self.document.get("layers")
        return [
            d
            for d in (found if isinstance(found, list) else [])
            if isinstance(d, dict) and isinstance(d.get("digest"), str) and type(d.get("size")) is int
        ]

    @property
    def annotations(self) -> dict[str, str]:
        """The manifest's annotations (string values only)."""
        found = self.document.get("annotations")
        return {str(k): v for k, v in (found if isinstance(found, dict) else {}).items() if isinstance(v, str)}

    @property
    def subject(self) -> str:
        """The digest of the manifest it refers to."""
        subject = self.document.get("subject")
        return str(subject.get("digest", "")) if isinstance(subject, dict) else ""


def manifest_by_digest(registry: Registry, repository: str, digest: str) -> Referrer:
    """A manifest fetched by digest and checked against it (any parse problem refused as a RegistryError)."""
    return Referrer(digest, verified_manifest(registry, repository, digest))


def checked_referrers(
    registry: Registry, repository: str, subject_digest: str, artifact_type: str | None = None
) -> tuple[list[Referrer], list[str]]:
    """The referrers of `subject_digest` (of one artifact type, when given), each fetched by digest and checked to
    refer to it; and one line for each listed referrer that was refused (missing, another digest, another
    subject): a crafted index entry is never taken for evidence."""
    raw = registry.referrers(repository, subject_digest) or registry.manifest(repository, fallback_tag(subject_digest))
    found: list[Referrer] = []
    refused: list[str] = []
    for descriptor in _listed(raw):
        digest = str(descriptor.get("digest", ""))
        if artifact_type is not None and descriptor.get("artifactType") not in (None, artifact_type):
            continue
        try:
            referrer = manifest_by_digest(registry, repository, digest)
        except RegistryError as exc:
            refused.append(f"the referrer {digest[:19]} of {subject_digest[:19]}: {exc.message}")
            continue
        if referrer.subject != subject_digest:
            refused.append(f"the referrer {digest[:19]} does not refer to {subject_digest[:19]}")
        elif artifact_type is None or referrer.artifact_type == artifact_type:
            found.append(referrer)
    return found, refused


def layer_data(registry: Registry, repository: str, layer: dict[str, Any], max_bytes: int) -> bytes:
    """One layer's bytes, refused when its declared size is over `max_bytes` or its content is not its digest."""
    digest, size = str(layer.get("digest", "")), layer.get("size")
    if type(size) is not int or size > max_bytes:
        raise RegistryError(f"refused: the layer {digest[:19]} declares {size} bytes (at most {max_bytes} are taken)")
    data = registry.blob(repository, digest)
    if data is None:
        raise RegistryError(f"the registry has no blob {digest[:19]} in {repository}")
    if len(data) != size or sha256_digest(data) != digest:
        raise RegistryError(f"refused: the blob the registry gave for {digest[:19]} is not of that digest")
    return data


def fetch_referrers(registry: Registry, repository: str, subject_digest: str) -> list[Artifact]:
    """Every one-document artifact (SBOM, provenance) referring to the manifest, each checked by digest (manifest
    and document) and subject; a referrer that fails a check is refused with a RegistryError."""
    found, refused = checked_referrers(registry, repository, subject_digest)
    if refused:
        raise RegistryError(refused[0])
    artifacts = []
    for referrer in found:
        if len(referrer.layers) != 1 or referrer.artifact_type not in (SBOM_TYPE, DSSE_TYPE):
            continue  # a run's evidence or another tool's artifact: not one of the image's own documents
        (layer,) = referrer.layers
        data = layer_data(registry, repository, layer, DOCUMENT_MAX_BYTES)
        artifacts.append(Artifact(referrer.artifact_type, data))
    return artifacts


def split_pushed(pushed: str) -> tuple[str, str, str]:
    """`host/repo@sha256:…` → (host, repository, digest)."""
    name, _, digest = pushed.partition("@")
    host, _, repository = name.partition("/")
    return host, repository, digest


def publish(registry: Registry, pushed: str, sbom: str, attestation: bytes) -> list[str]:
    """`envlock build --push`: the SBOM and the image's provenance, as referrers of the pushed manifest."""
    _, repository, digest = split_pushed(pushed)
    return push_referrers(
        registry, repository, digest, [Artifact(SBOM_TYPE, sbom.encode()), Artifact(DSSE_TYPE, attestation)]
    )


@dataclass(frozen=True)
class Retrieved:
    """What a registry holds about a pushed image: its SBOM and its provenance envelope (None: absent)."""

    sbom: bytes | None
    attestation: dict[str, Any] | None


def retrieve(registry: Registry, pushed: str) -> Retrieved:
    """The SBOM and provenance referring to a pushed image, each checked by digest and subject."""
    _, repository, digest = split_pushed(pushed)
    artifacts = fetch_referrers(registry, repository, digest)
    sbom = next((a.data for a in artifacts if a.artifact_type == SBOM_TYPE), None)
    raw = next((a.data for a in artifacts if a.artifact_type == DSSE_TYPE), None)
    return Retrieved(sbom, json.loads(raw) if raw else None)
