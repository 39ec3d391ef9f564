"""An image's SBOM and provenance in the registry, as OCI 1.1 artifacts that refer to its manifest.

Each artifact is a manifest with an `artifactType`, an empty config, one layer (the document) and a `subject` (the
image manifest). Registries with the referrers API index them by themselves; on the others (Debian's registry,
distribution 2.8) the referrers tag schema is the fallback: the tag `sha256-<hex of the image manifest digest>`
holds an OCI index of the referring manifests, which envlock reads, extends and writes back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from envlock.errors import RegistryError
from envlock.image.registry import OCI_INDEX, OCI_MANIFEST, Blob, Registry

EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": _digest(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": artifact.artifact_type, "digest": _digest(artifact.data), "size": len(artifact.data)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
    }
    return _canonical(manifest)


def push_referrers(registry: Registry, repository: str, subject_digest: str, artifacts: list[Artifact]) -> list[str]:
    """Push each artifact referring to the image manifest `subject_digest`, then the fallback index when the
    registry has no referrers API; returns the artifact manifests' digests."""
    subject = registry.manifest(repository, subject_digest)
    if subject is None or _digest(subject) != subject_digest:
        raise RegistryError(f"the registry has no manifest {subject_digest[:19]} in {repository} to refer to")
    descriptors: list[dict[str, Any]] = []
    for artifact in artifacts:
        for blob in (EMPTY_CONFIG, artifact.data):
            if not registry.has_blob(repository, _digest(blob)):
                registry.put_blob(repository, Blob(_digest(blob), len(blob), data=blob))
        manifest = artifact_manifest(artifact, subject_digest, len(subject))
        digest = registry.put_manifest(repository, _digest(manifest), manifest)
        if digest != _digest(manifest):
            raise RegistryError(f"the registry reports digest {digest} for an artifact of digest {_digest(manifest)}")
        descriptors.append(
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "artifactType": artifact.artifact_type}
        )
    if registry.referrers(repository, subject_digest) is None:
        tag = fallback_tag(subject_digest)
        existing = registry.manifest(repository, tag)
        index: dict[str, Any] = (
            json.loads(existing) if existing else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        )
        listed: list[dict[str, Any]] = list(index.get("manifests") or [])
        known = {d.get("digest") for d in listed}
        index["manifests"] = [*listed, *(d for d in descriptors if d["digest"] not in known)]
        registry.put_manifest(repository, tag, _canonical(index), OCI_INDEX)
    return [str(d["digest"]) for d in descriptors]


def fetch_referrers(registry: Registry, repository: str, subject_digest: str) -> list[Artifact]:
    """Every artifact referring to the manifest, each checked by digest (manifest and document) and subject."""
    raw = registry.referrers(repository, subject_digest) or registry.manifest(repository, fallback_tag(subject_digest))
    if raw is None:
        return []
    found = []
    for descriptor in json.loads(raw).get("manifests", []):
        digest = str(descriptor.get("digest", ""))
        manifest = registry.manifest(repository, digest)
        if manifest is None or _digest(manifest) != digest:
            raise RegistryError(f"the referrer {digest[:19]} of {subject_digest[:19]} is missing or not its digest")
        document = json.loads(manifest)
        if document.get("subject", {}).get("digest") != subject_digest:
            raise RegistryError(f"the referrer {digest[:19]} does not refer to {subject_digest[:19]}")
        (layer,) = document["layers"]
        data = registry.blob(repository, layer["digest"])
        if data is None or _digest(data) != layer["digest"]:
            raise RegistryError(f"the document of referrer {digest[:19]} is missing or not its digest")
        found.append(Artifact(str(document.get("artifactType") or layer["mediaType"]), data))
    return found


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
