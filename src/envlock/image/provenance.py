"""The image's provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate, in a DSSE envelope.

Subject: the image config digest (the image ID) and, once pushed, the manifest digest. The build is described by
what decides the image's bytes: the lock hash, the base, the recipe, the platform, and every wheel by sha256.
Nothing in it varies between two builds of the same lock (no times), so rebuilding writes the same statement.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envlock import __version__
from envlock.errors import VerificationError
from envlock.image.plan import ImagePlan
from envlock.paths import ProjectLayout
from envlock.signing import (
    STATEMENT_TYPE,
    PublicKey,
    SigningKey,
    canonical,
    envelope,
    open_envelope,
    signed_by,
    write_envelope,
)

SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://envlock.dev/build/v1"
BUILDER_ID = "https://envlock.dev/builder/envlock"


def hex_of(digest: str) -> str:
    """`sha256:abc…` or `repo@sha256:abc…` → `abc…`."""
    return digest.rpartition("sha256:")[2]


def image_statement(
    plan: ImagePlan, image_id: str, pushed: str | None = None, sbom_digest: str | None = None
) -> dict[str, Any]:
    """The statement for the plan's image, built as `image_id` (and pushed as `repo@sha256:…`); the SBOM's sha256
    is the plan's rendered SBOM's unless given."""
    lock = plan.lock
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(plan, image_id, pushed),
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _external_parameters(plan),
                "internalParameters": {
                    "python": lock.python,
                    "source-date-epoch": lock.source_date_epoch,
                    "system-packages": list(lock.system_packages),
                },
                "resolvedDependencies": _resolved_dependencies(plan),
            },
            "runDetails": {
                "builder": {"id": f"{BUILDER_ID}@{__version__}", "version": {"envlock": __version__}},
                "metadata": {"invocationId": f"{lock.lock_hash}|{plan.platform}"},
                "byproducts": _byproducts(plan, sbom_digest),
            },
        },
    }


def _subjects(plan: ImagePlan, image_id: str, pushed: str | None) -> list[dict[str, Any]]:
    """The image config (the image ID) and, once pushed, the manifest."""
    subject: list[dict[str, Any]] = [
        {"name": plan.reference, "digest": {"sha256": hex_of(image_id)}, "annotations": {"envlock:kind": "config"}}
    ]
    if pushed:
        subject.append(
            {
                "name": pushed.partition("@")[0],
                "digest": {"sha256": hex_of(pushed)},
                "annotations": {"envlock:kind": "manifest"},
            }
        )
    return subject


def _external_parameters(plan: ImagePlan) -> dict[str, Any]:
    """What the builder was asked for: the lock hash, the base, the recipe (for a recipe base), the platform."""
    lock = plan.lock
    target = lock.target(plan.platform)
    base: dict[str, Any] = {"name": lock.base.name, "kind": lock.base.kind, "sha256": lock.base.sha256}
    if target.base is not None:
        base["id"] = target.base.id
    return {
        "lock-hash": lock.lock_hash,
        "base": base,
        "recipe": {"name": lock.base.name, "sha256": lock.base.sha256} if lock.base.kind == "recipe" else None,
        "platform": plan.platform,
    }


def _resolved_dependencies(plan: ImagePlan) -> list[dict[str, Any]]:
    """The pinned base (with its Debian package count) and every wheel by sha256, by name."""
    lock = plan.lock
    target = lock.target(plan.platform)
    dependencies: list[dict[str, Any]] = []
    if target.base is not None:
        dependencies.append(
            {
                "name": f"base:{lock.base.name}",
                "digest": {"sha256": hex_of(target.base.id)},
                "annotations": {"debian-packages": len(target.base.debian)},
            }
        )
    dependencies += [
        {"name": wheel.name, "uri": wheel.url, "digest": {"sha256": wheel.sha256}}
        for wheel in sorted(plan.wheels, key=lambda w: w.name)
    ]
    return dependencies


def _byproducts(plan: ImagePlan, sbom_digest: str | None) -> list[dict[str, Any]]:
    """The SBOM embedded in the image, by sha256 (none when the plan has no SBOM)."""
    if not plan.embeds_sbom:
        return []
    digest = sbom_digest if sbom_digest is not None else hashlib.sha256(plan.sbom.encode()).hexdigest()
    return [{"name": "sbom.cdx.json", "mediaType": "application/vnd.cyclonedx+json", "digest": {"sha256": digest}}]


def attestation_path(project_dir: Path, image_id: str) -> Path:
    """`.envlock/attestations/<image-id hex>.dsse.json`."""
    return ProjectLayout(project_dir).attestations / f"{hex_of(image_id)}.dsse.json"


def write_image_attestation(
    project_dir: Path, plan: ImagePlan, image_id: str, pushed: str | None, key: SigningKey | None
) -> tuple[Path, dict[str, Any]]:
    """Write the image's signed (or unsigned) provenance into the project's .envlock/attestations/ (kept as it is
    when the same provenance is there already: a no-op build neither renders the SBOM nor rewrites the file)."""
    path = attestation_path(project_dir, image_id)
    if pushed is None and (kept := _written_before(path, plan, image_id, key)) is not None:
        return path, kept
    document = envelope(image_statement(plan, image_id, pushed), key)
    return write_envelope(path, document), document


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _written_before(path: Path, plan: ImagePlan, image_id: str, key: SigningKey | None) -> dict[str, Any] | None:
    """The envelope at `path` when it is exactly what would be written now (same statement, signed by this key
    alone, or unsigned when there is none), else None. Only the SBOM's digest is read from it: the image ID fixes the
    SBOM's bytes (they are in its lock layer), and a wrong digest is no worse than a forged file beside it."""
    try:
        document = json.loads(path.read_bytes())
        opened = open_envelope(document, key.public if key else None)
    except (OSError, ValueError, VerificationError):
        return None
    if opened.signatures != (1 if key else 0):
        return None
    digest = None
    if plan.embeds_sbom:
        try:
            found = opened.statement["predicate"]["runDetails"]["byproducts"][0]["digest"]["sha256"]
        except (KeyError, IndexError, TypeError):
            return None
        if not (isinstance(found, str) and _SHA256.fullmatch(found)):
            return None
        digest = found
    expected = image_statement(plan, image_id, None, sbom_digest=digest)
    return document if canonical(expected) == canonical(opened.statement) else None


def check_pulled(
    document: dict[str, Any], manifest_digest: str, image_id: str, trusted: Sequence[PublicKey], *, required: bool
) -> str:
    """A provenance fetched from the registry must be about this manifest and this image; signed by one of the
    trusted keys when `required` (keys named on the command line), else its origin is said, not demanded."""
    where = "the image's provenance in the registry"
    opened = open_envelope(document, None, where)
    signer = signed_by(document, trusted) if trusted else None
    if required and signer is None:
        raise VerificationError(
            f"{where} has no valid signature by the key(s) given", hint="check --key: the public key of its signer"
        )
    subjects = {
        (s.get("annotations") or {}).get("envlock:kind"): "sha256:" + str(s.get("digest", {}).get("sha256"))
        for s in opened.statement.get("subject") or []
    }
    for kind, wanted in (("manifest", manifest_digest), ("config", image_id)):
        if subjects.get(kind) != wanted:
            raise VerificationError(
                f"the provenance in the registry is about {kind} {str(subjects.get(kind))[:19]}, not {wanted[:19]}"
            )
    return f"provenance subject = manifest {manifest_digest[:19]} and image {image_id[:19]}" + (
        f", signed by trusted key {signer.keyid[:16]}" if signer else ", origin not verified (no trusted key signed it)"
    )
